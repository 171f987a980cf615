"""Meta tensors (docs/design.md#2-public-api): every op on every backend infers the shapes and
dtypes of its outputs and gradients, with the value checks (which read data) skipped."""

from __future__ import annotations

import pytest
import torch

from amc_kernels import _dispatch, functional, testing
from amc_kernels._dispatch import BackendUnavailableError
from amc_kernels._spec import OPS
from amc_kernels.testing import Arguments

CASES = [
    pytest.param(op, backend, id=f"{op}-{backend or 'auto'}")
    for op in OPS
    for backend in (None, *_dispatch.IMPLEMENTATIONS[op])
]


def _to_meta(arguments: Arguments) -> Arguments:
    return {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in arguments.items()}


@pytest.mark.parametrize(("op", "backend"), CASES)
def test_meta_tensors_infer_outputs_and_gradients(op: str, backend: str | None) -> None:
    cpu = testing.make_inputs(op, "cpu", torch.float32, small=True)
    meta = _to_meta(cpu)
    if backend is not None:
        reasons = _dispatch.refusals(backend, testing.dispatch_call(op, meta))
        if reasons:
            pytest.skip(f"{backend} refuses {op} on meta: " + "; ".join(reasons))
    got_outputs, got_grads = testing.run_with_grads(op, backend, meta)
    outputs, grads = testing.run_with_grads(op, "reference", cpu)
    assert len(got_outputs) == len(outputs) and len(got_grads) == len(grads)
    for got, expected in zip([*got_outputs, *got_grads], [*outputs, *grads], strict=True):
        assert got.device.type == "meta"
        assert (got.shape, got.dtype) == (expected.shape, expected.dtype)


def test_value_checks_are_skipped_on_meta() -> None:
    """targets out of [0, C) is found on CPU; on meta there is nothing to read."""
    activations, weight = torch.randn(2, 3, 4, 4), torch.randn(5, 3)
    targets = torch.tensor([0, 7])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        functional.class_activation_map(activations, weight, targets)
    cam = functional.class_activation_map(
        activations.to("meta"), weight.to("meta"), targets.to("meta")
    )
    assert cam.is_meta and cam.shape == (2, 4, 4)


def test_a_meta_tensor_temperature_is_not_read() -> None:
    """A learnable temperature on meta: its value check (> 0) is skipped like the others."""
    features = torch.randn(4, 2, 8, device="meta")
    tau = torch.tensor(0.1, device="meta", requires_grad=True)
    loss = functional.supcon_loss(features, torch.zeros(4, device="meta").long(), temperature=tau)
    assert loss.is_meta and loss.shape == ()


def test_metadata_checks_still_run_on_meta() -> None:
    with pytest.raises(ValueError, match=r"amc_loss: labels has size 3 in dimension 0"):
        functional.amc_loss(torch.randn(4, 2, device="meta"), torch.zeros(3, device="meta").long())


def test_the_cgc_reference_refuses_meta_and_auto_uses_a_fused_backend() -> None:
    """The literal pipeline slices each map at the values of crops; the fused kernels do not."""
    meta = _to_meta(testing.make_inputs("cgc_loss", "cpu", torch.float32, small=True))
    with pytest.raises(BackendUnavailableError, match="values of crops"):
        testing.call("cgc_loss", "reference", meta)
    assert testing.call("cgc_loss", None, meta).is_meta
