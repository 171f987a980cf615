"""nn.FeatureQueue (docs/design.md#28-modules-and-helpers): a FIFO of detached features and
labels feeding supcon_loss as negatives or as extra positives, on every backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from conftest import longs, rand

from amc_kernels import _dispatch, functional, testing
from amc_kernels.nn import FeatureQueue

BACKENDS = [
    "reference",
    pytest.param("cpp", marks=pytest.mark.cpp),
    pytest.param("triton", marks=pytest.mark.triton),
]


def filled(size: int = 6, dim: int = 4, rows: int = 9, seed: int = 0) -> FeatureQueue:
    queue = FeatureQueue(size, dim, dtype=torch.float64)
    z = rand(rows, dim, seed=seed)
    queue.enqueue(z[:5], longs([0, 1, 2, 0, 1]))
    queue.enqueue(z[5:], longs([2, 2, 0, 1][: rows - 5]))
    return queue


def usable(backend: str, op: str, arguments: dict) -> None:
    reasons = _dispatch.refusals(backend, testing.dispatch_call(op, arguments))
    if reasons:
        pytest.skip(f"{backend} refuses {op}: " + "; ".join(reasons))


# --- the FIFO ---


def test_rows_replace_the_oldest_in_slot_order() -> None:
    queue = FeatureQueue(4, 2)
    first, second = torch.arange(6.0).view(3, 2), 10 + torch.arange(6.0).view(3, 2)
    queue.enqueue(first, longs([0, 1, 2]))
    assert len(queue) == 3 and not queue.full
    torch.testing.assert_close(queue.features, first)
    queue.enqueue(second, longs([3, 4, 5]))  # slots 3, 0, 1
    assert len(queue) == 4 and queue.full
    torch.testing.assert_close(
        queue.features, torch.stack([second[1], second[2], first[2], second[0]])
    )
    assert queue.labels.tolist() == [4, 5, 2, 3]


def test_a_batch_larger_than_the_queue_keeps_its_last_rows() -> None:
    queue = FeatureQueue(3, 1)
    queue.enqueue(torch.arange(5.0)[:, None], longs([0, 1, 2, 3, 4]))
    assert queue.features.flatten().tolist() == [2.0, 3.0, 4.0]
    assert queue.labels.tolist() == [2, 3, 4]


def test_rows_are_detached_copies_in_the_queue_dtype() -> None:
    queue = FeatureQueue(4, 3, labeled=False)
    z = torch.randn(2, 3, dtype=torch.bfloat16, requires_grad=True)
    queue.enqueue(z)
    assert queue.features.dtype == torch.float32 and not queue.features.requires_grad
    with torch.no_grad():
        z.zero_()
    assert bool(queue.features.abs().sum() > 0)


def test_state_dict_and_to_keep_the_queue() -> None:
    queue = filled()
    restored = FeatureQueue(6, 4, dtype=torch.float64)
    restored.load_state_dict(queue.state_dict())
    assert len(restored) == len(queue)
    torch.testing.assert_close(restored.features, queue.features)
    assert torch.equal(restored.labels, queue.labels)
    restored.enqueue(rand(1, 4), longs([7]))  # continues at the same slot
    queue.enqueue(rand(1, 4), longs([7]))
    torch.testing.assert_close(restored.features, queue.features)
    assert queue.to(torch.float32).features.dtype == torch.float32
    assert "size=6, dim=4, labeled=True" in repr(queue)


def test_queue_errors() -> None:
    with pytest.raises(ValueError, match="FeatureQueue: size must be > 0"):
        FeatureQueue(0, 4)
    with pytest.raises(TypeError, match="FeatureQueue: dim must be an int"):
        FeatureQueue(4, 2.5)
    with pytest.raises(TypeError, match="FeatureQueue: dtype must be a floating dtype"):
        FeatureQueue(4, 2, dtype=torch.long)
    queue = FeatureQueue(4, 2)
    with pytest.raises(ValueError, match=r"features has size 3 in dimension 1 .*queue's dim"):
        queue.enqueue(torch.randn(2, 3), longs([0, 1]))
    with pytest.raises(ValueError, match="labels are required"):
        queue.enqueue(torch.randn(2, 2))
    with pytest.raises(ValueError, match="labels has size 1 in dimension 0"):
        queue.enqueue(torch.randn(2, 2), longs([0]))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        queue.enqueue(torch.randn(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="features is on meta but the queue is on cpu"):
        queue.enqueue(torch.randn(2, 2, device="meta"), longs([0, 1]))
    unlabeled = FeatureQueue(4, 2, labeled=False)
    with pytest.raises(ValueError, match="labels given, but the queue was created with labeled"):
        unlabeled.enqueue(torch.randn(2, 2), longs([0, 1]))
    with pytest.raises(ValueError, match="keeps no labels"):
        unlabeled.with_batch(torch.randn(2, 2), longs([0, 1]))


# --- feeding supcon_loss, on every backend ---


def cross_batch_supcon(z, y, bank, bank_labels, temperature=0.1, base=0.07) -> torch.Tensor:
    """The batch's anchors against the batch and the bank (CrossBatchMemory), written out."""
    rows = TF.normalize(torch.cat([z, bank]), dim=1)
    labels = torch.cat([y, bank_labels])
    losses = []
    for i in range(len(z)):
        others = torch.arange(len(rows)) != i
        logits = rows[others] @ rows[i] / temperature
        log_prob = logits - torch.logsumexp(logits, dim=0)
        positive = labels[others] == labels[i]
        mean = log_prob[positive].mean() if positive.any() else log_prob.sum() * 0
        losses.append(-(temperature / base) * mean)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_queue_as_negatives(backend: str) -> None:
    queue, y = filled(), longs([0, 1, 1, 2, 0])
    z = rand(5, 2, 4, seed=3).requires_grad_()
    arguments = {"features": z, "labels": y, "negatives": queue.features}
    usable(backend, "supcon_loss", arguments)
    got = functional.supcon_loss(z, y, negatives=queue.features, backend=backend)
    (grad,) = torch.autograd.grad(got, z)
    expected = functional.supcon_loss(z, y, negatives=queue.features, backend="reference")
    (expected_grad,) = torch.autograd.grad(expected, z)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_queue_as_extra_positives(backend: str) -> None:
    queue, y = filled(), longs([0, 1, 1, 2, 0])
    z = rand(5, 4, seed=4).requires_grad_()
    features, labels = queue.with_batch(z, y)
    assert features.shape == (5 + len(queue), 4) and labels.shape == (5 + len(queue),)
    usable(backend, "supcon_loss", {"features": features, "labels": labels, "negatives": None})
    per_anchor = functional.supcon_loss(features, labels, reduction="none", backend=backend)
    got = per_anchor[: len(z)].mean()
    (grad,) = torch.autograd.grad(got, z)
    expected = cross_batch_supcon(z, y, queue.features, queue.labels)
    (expected_grad,) = torch.autograd.grad(expected, z)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert not queue.features.requires_grad
