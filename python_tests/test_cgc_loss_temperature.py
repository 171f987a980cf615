"""cgc_loss with a learnable (0-d tensor) temperature on every CPU backend
(docs/design.md#26-cgc_loss): ∂L/∂τ by finite differences and against the reference, the same
value as the number τ, the flat-map answer, the module's parameter and the errors."""

from __future__ import annotations

import math

import pytest
import torch
from _cgc_loss_cases import cgc_maps, cgc_random_crops
from _helpers import skip_unless_usable

import amc_kernels
from amc_kernels import functional

BACKENDS = [
    "reference",
    pytest.param("cpp", marks=pytest.mark.cpp),
    pytest.param("triton", marks=pytest.mark.triton),
]
KERNELS = [
    pytest.param("cpp", marks=pytest.mark.cpp),
    pytest.param("triton", marks=pytest.mark.triton),
]
SIZE = 12


def _inputs(batch: int = 5, h: int = 4, w: int = 3, seed: int = 0, dtype=torch.float64):
    cam_orig, cam_aug = cgc_maps(batch, h, w, seed, dtype)
    crops, flips = cgc_random_crops(batch, SIZE, seed)
    return cam_orig, cam_aug, crops, flips


def _tau(value: float = 0.3, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, requires_grad=True)


def _loss(backend: str, cam_orig, cam_aug, crops, flips, tau) -> torch.Tensor:
    return functional.cgc_loss(
        cam_orig, cam_aug, crops, flips, temperature=tau, size=SIZE, backend=backend
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_temperature_gradcheck(backend: str) -> None:
    # ∂L/∂τ, ∂L/∂cam_orig and ∂L/∂cam_aug against finite differences in float64.
    skip_unless_usable(backend)
    cam_orig, cam_aug, crops, flips = _inputs()
    leaves = (cam_orig.requires_grad_(), cam_aug.requires_grad_(), _tau())

    def loss(o: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _loss(backend, o, a, crops, flips, t)

    assert torch.autograd.gradcheck(loss, leaves)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize(("batch", "tau"), [(1, 0.5), (5, 0.3), (19, 0.07), (7, 2.0)])
def test_value_and_gradients_match_reference(backend: str, batch: int, tau: float) -> None:
    # float64: the loss and all three gradients within 1e-12 of the reference, relative.
    skip_unless_usable(backend)
    cam_orig, cam_aug, crops, flips = _inputs(batch, seed=batch)

    def run(name: str) -> list[torch.Tensor]:
        o, a, t = cam_orig.clone().requires_grad_(), cam_aug.clone().requires_grad_(), _tau(tau)
        loss = _loss(name, o, a, crops, flips, t)
        return [loss.detach(), *torch.autograd.grad(loss, (o, a, t))]

    for what, got, expected in zip(
        ("loss", "grad_orig", "grad_aug", "grad_tau"), run(backend), run("reference"), strict=True
    ):
        assert got.shape == expected.shape and got.dtype == expected.dtype, what
        scale = expected.abs().max().item()
        error = (got - expected).abs().max().item()
        assert error <= 1e-12 * scale + 1e-14, f"{what}: error {error:.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tau", [0.5, 0.3, 0.07])
def test_tensor_and_number_temperature_give_identical_values(
    backend: str, dtype: torch.dtype, tau: float
) -> None:
    skip_unless_usable(backend)
    cam_orig, cam_aug, crops, flips = _inputs(6, dtype=dtype)
    number = _loss(backend, cam_orig, cam_aug, crops, flips, tau)
    tensor = _loss(backend, cam_orig, cam_aug, crops, flips, torch.tensor(tau, dtype=dtype))
    assert torch.equal(number, tensor), (number.item(), tensor.item())


@pytest.mark.parametrize("backend", KERNELS)
def test_temperature_gradient_alone_and_without_it(backend: str) -> None:
    # output_mask: ∂L/∂τ alone equals its value with the maps' gradients; maps alone are
    # unchanged by the tensor τ (same as the number τ).
    skip_unless_usable(backend)
    cam_orig, cam_aug, crops, flips = _inputs(5)
    tau = _tau()
    (alone,) = torch.autograd.grad(_loss(backend, cam_orig, cam_aug, crops, flips, tau), tau)
    o, a = cam_orig.clone().requires_grad_(), cam_aug.clone().requires_grad_()
    together = torch.autograd.grad(_loss(backend, o, a, crops, flips, tau), (o, a, tau))
    assert torch.equal(alone, together[2])
    number = torch.autograd.grad(_loss(backend, o, a, crops, flips, 0.3), (o, a))
    assert torch.equal(number[0], together[0]) and torch.equal(number[1], together[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_maps_give_zero_temperature_gradient(backend: str) -> None:
    # 1×1 maps: every logit is 1/τ, the loss is log B, and ∂L/∂τ = 0 (not None).
    skip_unless_usable(backend)
    cam_orig, cam_aug, crops, flips = _inputs(3, 1, 1)
    tau = _tau()
    loss = _loss(backend, cam_orig, cam_aug, crops, flips, tau)
    (grad,) = torch.autograd.grad(loss, tau)
    assert loss.item() == math.log(3)
    assert grad.item() == 0.0


@pytest.mark.parametrize("backend", KERNELS)
def test_low_precision_maps_with_a_float32_temperature(backend: str) -> None:
    # bf16 maps, an fp32 parameter: the gradient comes back in τ's dtype, close to fp64's.
    skip_unless_usable(backend)
    cam_orig, cam_aug, crops, flips = _inputs(5)
    tau = _tau(0.3, torch.float32)
    got = torch.autograd.grad(
        _loss(backend, cam_orig.bfloat16(), cam_aug.bfloat16(), crops, flips, tau), tau
    )[0]
    reference = torch.autograd.grad(
        _loss("reference", cam_orig.bfloat16(), cam_aug.bfloat16(), crops, flips, tau), tau
    )[0]
    assert got.dtype == torch.float32 and got.shape == ()
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-6)


def test_parameter_temperature_trains_in_a_module() -> None:
    tau = torch.nn.Parameter(torch.tensor(0.2))
    module = amc_kernels.nn.CGCLoss(temperature=tau, size=SIZE)
    assert list(module.parameters()) == [tau]
    assert "temperature=tensor(0.2)" in repr(module)
    cam_orig, cam_aug, crops, flips = _inputs(4, dtype=torch.float32)
    module(cam_orig, cam_aug, crops, flips).backward()
    assert tau.grad is not None and torch.isfinite(tau.grad) and tau.grad.item() != 0.0


@pytest.mark.parametrize(
    ("temperature", "error", "match"),
    [
        (torch.tensor([0.1]), ValueError, r"cgc_loss: temperature must be a number or a 0-d"),
        (torch.tensor(1), TypeError, "cgc_loss: temperature must be a floating-point tensor"),
        (torch.tensor(0.0), ValueError, "cgc_loss: temperature must be finite and > 0"),
        (torch.tensor(-0.1), ValueError, "cgc_loss: temperature must be finite and > 0"),
        (torch.tensor(float("inf")), ValueError, "cgc_loss: temperature must be finite and > 0"),
        (torch.tensor(0.1, device="meta"), ValueError, "temperature is on meta but cam_orig"),
        (-0.5, ValueError, "cgc_loss: temperature"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_temperature_raises(backend: str, temperature: object, error: type, match: str) -> None:
    skip_unless_usable(backend)
    cam_orig, cam_aug, crops, flips = _inputs(3)
    with pytest.raises(error, match=match):
        _loss(backend, cam_orig, cam_aug, crops, flips, temperature)


def test_meta_tensor_temperature_infers_shapes() -> None:
    # The fake kernels: loss and gradient shapes and dtypes with a meta τ, no data.
    cam_orig, cam_aug, crops, flips = (t.to("meta") for t in _inputs(3, dtype=torch.float32))
    tau = torch.tensor(0.3, device="meta", requires_grad=True)
    o = cam_orig.requires_grad_()
    loss = functional.cgc_loss(o, cam_aug, crops, flips, temperature=tau, size=SIZE, backend="cpp")
    grad_o, grad_t = torch.autograd.grad(loss, (o, tau))
    assert loss.shape == () and grad_o.shape == cam_orig.shape and grad_t.shape == ()
    assert grad_t.device.type == "meta" and grad_t.dtype == torch.float32
