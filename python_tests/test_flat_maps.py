"""The defined answer on flat (constant) maps, identical on every backend: a flat map resizes to
exactly its constant, so its min–max normalisation is 0 (docs/design.md#2-public-api)."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import skip_unless_usable

from amc_kernels import functional

BACKENDS = [
    "reference",
    pytest.param("cpp", marks=pytest.mark.cpp),
    pytest.param("triton", marks=pytest.mark.triton),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_saliency_keeps_nothing_above_a_threshold(backend: str) -> None:
    # e ≡ 0: nothing passes e > t for any t in [0, 1]; top_fraction takes the first pixels.
    skip_unless_usable(backend)
    images = torch.randn(3, 2, 7, 6)
    saliency = torch.stack([torch.full((1, 1), 2.7), torch.full((1, 1), 1e-3), torch.zeros(1, 1)])
    for flat in (saliency, saliency.expand(3, 3, 4).contiguous()):
        for threshold in (0.0, 0.5):
            masked, keep = functional.saliency_mask(
                images, flat, threshold=threshold, fill=-1.0, backend=backend
            )
            assert not keep.any() and (masked == -1.0).all()
        _, keep = functional.saliency_mask(images, flat, top_fraction=0.25, backend=backend)
        first = torch.zeros(42, dtype=torch.bool)
        first[:11] = True  # ⌊0.25·42 + ½⌋ = 11, ties to the lower index
        assert torch.equal(keep, first.view(1, 7, 6).expand(3, 7, 6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_pixel_gradcam_minmax_is_zero(backend: str) -> None:
    skip_unless_usable(backend)
    activations = (torch.rand(3, 4, 1, 1) * 3).requires_grad_()
    gradients = torch.rand(3, 4, 1, 1).requires_grad_()
    maps = functional.gradcam(
        activations, gradients, normalize="minmax", output_size=(7, 5), backend=backend
    )
    assert maps.shape == (3, 7, 5) and (maps == 0).all()
    grads = torch.autograd.grad(maps.sum(), [activations, gradients])
    assert all((g == 0).all() for g in grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_pixel_cgc_is_log_batch_with_zero_gradient(backend: str, dtype: torch.dtype) -> None:
    skip_unless_usable(backend)
    cam_orig = torch.rand(6, 1, 1, dtype=dtype).requires_grad_()
    cam_aug = torch.rand(6, 1, 1, dtype=dtype).requires_grad_()
    crops = torch.tensor([[0, 0, 5, 5], [1, 1, 3, 3], [0, 2, 4, 3], [1, 0, 4, 5], [0, 0, 2, 2],
                          [2, 2, 3, 3]])  # fmt: skip
    flips = torch.tensor([0, 1, 0, 1, 0, 1]).bool()
    loss = functional.cgc_loss(
        cam_orig, cam_aug, crops, flips, temperature=0.05, size=5, backend=backend
    )
    assert loss.dtype == dtype and loss.item() == torch.tensor(math.log(6), dtype=dtype).item()
    grads = torch.autograd.grad(loss, [cam_orig, cam_aug])
    assert all((g == 0).all() for g in grads)
