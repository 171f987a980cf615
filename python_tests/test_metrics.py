"""amc_kernels.metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from amc_kernels import metrics as M


def mean_model(x: torch.Tensor) -> torch.Tensor:
    """A 2-class 'model' whose class-0 probability is the image mean m: logits (log m, log 1−m)."""
    m = x.mean(dim=(1, 2, 3))
    return torch.stack([m.log(), (1 - m).log()], dim=1)


def test_accuracy() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert M.accuracy(logits, torch.tensor([0, 0, 0])) == pytest.approx(2 / 3)
    assert M.accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)) == 0.0


def test_expected_calibration_error_by_hand() -> None:
    probabilities = torch.tensor(
        [[0.95, 0.05], [0.92, 0.08], [0.15, 0.85], [0.35, 0.65], [0.6, 0.4]]
    )
    labels = torch.tensor([0, 1, 0, 1, 0])
    # bins (0.9, 1]: {0.95 right, 0.92 wrong} → |1/2 − 0.935|·2; (0.8, 0.9]: 0.85 wrong;
    # (0.6, 0.7]: 0.65 right; (0.5, 0.6]: 0.6 right.
    expected = (2 * 0.435 + 0.85 + 0.35 + 0.4) / 5
    assert M.expected_calibration_error(probabilities, labels) == pytest.approx(expected)
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert M.expected_calibration_error(perfect, torch.tensor([0, 1])) == 0.0


def test_content_heatmap_by_hand() -> None:
    maps = torch.tensor([[[1.0, 0.0], [3.0, 0.0]], [[-1.0, 2.0], [2.0, 0.0]], [[0.0, 0.0], [0, 0]]])
    masks = torch.tensor([[[1, 0], [0, 0]], [[0, 1], [0, 0]], [[1, 1], [1, 1]]]).bool()
    got = M.content_heatmap(maps, masks)
    assert got[:2].tolist() == pytest.approx([0.25, 0.5])  # negative mass is clamped to 0
    assert math.isnan(got[2])  # an all-zero map has no mass to place
    # a constant map, resized, scores the mask's area
    area = torch.zeros(1, 4, 4, dtype=torch.bool)
    area[0, :2, :1] = True
    assert M.content_heatmap(torch.ones(1, 1, 1), area).item() == pytest.approx(2 / 16)


def test_pointing_game_with_tolerance() -> None:
    saliency = torch.zeros(1, 3, 3)
    saliency[0, 0, 0] = 1.0
    far, near = torch.zeros(1, 3, 3, dtype=torch.bool), torch.zeros(1, 3, 3, dtype=torch.bool)
    far[0, 2, 2], near[0, 0, 2] = True, True  # distances √8 and 2 from the peak
    assert M.pointing_game(saliency, far).item() == 0.0
    assert M.pointing_game(saliency, far, tolerance=2).item() == 0.0
    assert M.pointing_game(saliency, far, tolerance=3).item() == 1.0
    assert M.pointing_game(saliency, near, tolerance=1).item() == 0.0
    assert M.pointing_game(saliency, near, tolerance=2).item() == 1.0
    at_peak = torch.zeros(1, 3, 3, dtype=torch.bool)
    at_peak[0, 0, 0] = True
    assert M.pointing_game(torch.ones(1, 3, 3), at_peak).item() == 1.0  # ties: the first pixel


def test_gaussian_blur_of_a_delta() -> None:
    delta = torch.zeros(1, 1, 5, 5)
    delta[0, 0, 2, 2] = 1.0
    blurred = M.gaussian_blur(delta, kernel_size=3, sigma=1e6)  # a 3×3 box of 1/9
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 1:4, 1:4] = 1 / 9
    torch.testing.assert_close(blurred, expected)
    wide = M.gaussian_blur(torch.rand(2, 3, 16, 16))
    assert wide.shape == (2, 3, 16, 16)


def test_causal_auc_is_the_trapezoid_rule() -> None:
    scores = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
    assert M.causal_auc(scores).tolist() == pytest.approx([0.5, 1.0])
    assert M.causal_auc(torch.tensor([[0.2, 0.8]])).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2"):
        M.causal_auc(torch.ones(1, 1))


IMAGE = torch.tensor([[[[0.8, 0.6], [0.4, 0.2]]]])
SALIENCY = torch.tensor([[[0.0, 3.0], [1.0, 2.0]]])  # order: 0.6, 0.2, 0.4, 0.8
SUBSTRATE = torch.full_like(IMAGE, 0.1)
TARGET = torch.tensor([0])


def test_insertion_and_deletion_by_hand() -> None:
    common = {"substrate": SUBSTRATE, "targets": TARGET}
    insertion = M.causal_scores(mean_model, IMAGE, SALIENCY, mode="insertion", step=1, **common)
    torch.testing.assert_close(insertion, torch.tensor([[0.1, 0.225, 0.25, 0.325, 0.5]]))
    deletion = M.causal_scores(mean_model, IMAGE, SALIENCY, mode="deletion", step=1, **common)
    torch.testing.assert_close(deletion, torch.tensor([[0.5, 0.375, 0.35, 0.275, 0.1]]))
    coarse = M.causal_scores(mean_model, IMAGE, SALIENCY, mode="insertion", step=3, **common)
    torch.testing.assert_close(coarse, torch.tensor([[0.1, 0.325, 0.5]]))  # ⌈4/3⌉ + 1 points
    auc_in, auc_del = M.insertion_deletion_auc(mean_model, IMAGE, SALIENCY, step=1, **common)
    assert auc_in.item() == pytest.approx((1.4 - 0.05 - 0.25) / 4)
    assert auc_del.item() == pytest.approx((1.6 - 0.25 - 0.05) / 4)


def test_causal_defaults_blur_substrate_and_top1_target() -> None:
    images = torch.rand(3, 3, 8, 8) * 0.5 + 0.25
    saliency = torch.rand(3, 4, 4)  # resized to 8×8 inside
    scores = M.causal_scores(mean_model, images, saliency, mode="insertion", step=16)
    targets = mean_model(images).argmax(dim=1)
    blurred = mean_model(M.gaussian_blur(images)).softmax(dim=1)
    torch.testing.assert_close(scores[:, 0], blurred.gather(1, targets[:, None])[:, 0])
    assert scores.shape == (3, 5)
    with pytest.raises(ValueError, match="mode"):
        M.causal_scores(mean_model, images, saliency, mode="both", step=1)


def test_average_drop_and_increase_by_hand() -> None:
    images = torch.tensor([[[[0.8, 0.6], [0.4, 0.2]]], [[[0.9, 0.1], [0.1, 0.1]]]])
    saliency = torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]])
    # top 25 % of 4 pixels = 1 kept pixel, the others set to 0.5:
    # image 0 keeps 0.2: p = 0.5 → p' = 0.425, drop 0.15; image 1 keeps 0.9: p = 0.3 → p' = 0.6.
    drop, increase = M.average_drop_increase(
        mean_model, images, saliency, targets=torch.tensor([0, 0]), top_fraction=0.25, fill=0.5
    )
    assert drop.tolist() == pytest.approx([0.15, 0.0])
    assert increase.tolist() == [0.0, 1.0]
