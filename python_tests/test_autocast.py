"""Every op under torch.autocast (fp16, bf16; CPU and CUDA) on every backend: the same result and
gradients as outside autocast, losses in fp32 (docs/design.md#2-public-api)."""

from __future__ import annotations

import pytest
import torch
from _helpers import skip_unless_usable

import amc_kernels
from amc_kernels import functional
from amc_kernels._spec import OPS, SPECS
from amc_kernels.testing import make_inputs

BACKENDS = [
    "reference",
    pytest.param("cpp", marks=pytest.mark.cpp),
    pytest.param("triton", marks=pytest.mark.triton),
]
AUTOCAST_DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]
LOSSES = ("amc_loss", "supcon_loss", "cgc_loss")


def _run(
    op: str,
    backend: str,
    arguments: dict,
    autocast_dtype: torch.dtype | None,
    backward_inside: bool,
) -> list[torch.Tensor]:
    """Outputs then gradients, the forward under autocast (and the backward too if asked)."""
    device_type = next(v for v in arguments.values() if isinstance(v, torch.Tensor)).device.type
    enabled = autocast_dtype is not None
    dtype = autocast_dtype or torch.bfloat16
    with torch.autocast(device_type, dtype=dtype, enabled=enabled):
        leaves = {
            name: value.detach().clone().requires_grad_(name in SPECS[op].differentiable)
            if isinstance(value, torch.Tensor) and value.is_floating_point()
            else value
            for name, value in arguments.items()
        }
        result = getattr(functional, op)(**leaves, backend=backend)
        outputs = list(result) if isinstance(result, tuple) else [result]
        wrt = [
            leaves[name]
            for name in SPECS[op].differentiable
            if isinstance(leaves.get(name), torch.Tensor)  # a number temperature is not one
        ]
        if not wrt:
            return outputs
        with torch.autocast(device_type, dtype=dtype, enabled=enabled and backward_inside):
            grads = torch.autograd.grad(outputs[0].sum(), wrt, materialize_grads=True)
    return [*outputs, *grads]


@pytest.mark.parametrize("autocast_dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_op_under_autocast_equals_the_op_outside(
    op: str, backend: str, autocast_dtype: torch.dtype, device: torch.device
) -> None:
    # fp32 inputs: autocast changes nothing. The compiled backends also give the same gradients
    # when the backward runs inside the autocast region (`loss.backward()` inside the `with`
    # block); the reference's backward is PyTorch's own and, as any, follows autocast there.
    skip_unless_usable(backend, device)
    arguments = make_inputs(op, device, torch.float32, small=True)
    expected = _run(op, backend, arguments, None, False)
    for backward_inside in (False, True) if backend != "reference" else (False,):
        got = _run(op, backend, arguments, autocast_dtype, backward_inside)
        for value, want in zip(got, expected, strict=True):
            assert value.dtype == want.dtype
            torch.testing.assert_close(value, want, rtol=0, atol=0)
    if op in LOSSES:
        assert got[0].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_under_autocast_are_promoted(backend: str, device: torch.device) -> None:
    # An autocast model gives bf16 activations while the linear head's weight stays fp32: under
    # autocast the op runs on both in fp32 (autocast's "promote" rule), as torch.cat does.
    skip_unless_usable(backend, device)
    arguments = make_inputs("class_activation_map", device, torch.float32, small=True)
    mixed = arguments | {"activations": arguments["activations"].bfloat16().float()}
    expected = functional.class_activation_map(**mixed, backend=backend)
    mixed["activations"] = mixed["activations"].bfloat16()
    with pytest.raises(TypeError, match=r"fc_weight has dtype torch\.float32 but activations"):
        functional.class_activation_map(**mixed, backend=backend)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = functional.class_activation_map(**mixed, backend=backend)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_losses_under_autocast_return_fp32(
    backend: str, device: torch.device
) -> None:
    # bf16 features (an autocast head's output): fp32 loss and the same value as outside.
    skip_unless_usable(backend, device)
    for op in LOSSES:
        arguments = make_inputs(op, device, torch.bfloat16, small=True)
        expected = getattr(functional, op)(**arguments, backend=backend)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            got = getattr(functional, op)(**arguments, backend=backend)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.cpp
def test_compiled_ops_run_without_autocast_when_called_directly() -> None:
    # The op-level rule (amc_kernels._register.run_without_autocast) covers a direct call too:
    # the CPU kernels' inner GEMMs are not recast to bf16.
    if not amc_kernels._extension.available():
        pytest.skip("amc_kernels._C is not built")
    arguments = make_inputs("cgc_loss", "cpu", torch.float32, small=True)
    spec = SPECS["cgc_loss"]
    checked = spec.validate(dict(arguments))
    expected = torch.ops.amc_kernels.cgc_loss_fwd(*spec.kernel_arguments(checked))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.ops.amc_kernels.cgc_loss_fwd(*spec.kernel_arguments(checked))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
