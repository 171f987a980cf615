"""cgc_loss inputs and checks shared by test_cgc_loss*.py: seeded maps and crops, the fp64 rule."""

from __future__ import annotations

import torch

from amc_kernels import functional

EPS = 1e-8  # the +1e-8 of CGC's sum normalisation (both the divisor and the floor)


def cgc(cam_orig, cam_aug, crops, flips, **kwargs) -> torch.Tensor:
    return functional.cgc_loss(cam_orig, cam_aug, crops, flips, backend="reference", **kwargs)


def maps(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Strictly positive maps in [0.05, 1.05): ReLU'd CAMs away from the ReLU kink."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=gen, dtype=torch.float64) + 0.05).to(dtype)


def boxes(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long).view(-1, 4)


def bools(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


def close(got: torch.Tensor, expected: float, tol: float = 1e-12) -> None:
    assert got.dtype == torch.float64 and got.dim() == 0
    assert abs(got.item() - expected) <= tol, (got.item(), expected)


def cgc_maps(
    batch: int, h: int, w: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded non-negative [B, h, w] maps, like ReLU'd CAMs."""
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(2, batch, h, w, generator=gen, dtype=torch.float64).abs()
    return maps[0].to(dtype), maps[1].to(dtype)


def cgc_random_crops(batch: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of every shape from 1×1 to the whole frame, anywhere inside it, and random flips."""
    gen = torch.Generator().manual_seed(seed + 7919)
    height = torch.randint(1, size + 1, (batch,), generator=gen)
    width = torch.randint(1, size + 1, (batch,), generator=gen)
    top = (torch.rand(batch, generator=gen, dtype=torch.float64) * (size - height + 1)).long()
    left = (torch.rand(batch, generator=gen, dtype=torch.float64) * (size - width + 1)).long()
    flips = torch.rand(batch, generator=gen) < 0.5
    return torch.stack([top, left, height, width], dim=1), flips


def cgc_value_and_grads(
    backend: str, cam_orig: torch.Tensor, cam_aug: torch.Tensor, *args: object, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    orig = cam_orig.detach().clone().requires_grad_()
    aug = cam_aug.detach().clone().requires_grad_()
    loss = functional.cgc_loss(orig, aug, *args, backend=backend, **kwargs)
    grad_orig, grad_aug = torch.autograd.grad(loss, (orig, aug))
    return loss.detach(), grad_orig, grad_aug


def assert_cgc_exact(backend: str, *args: object, **kwargs: object) -> None:
    """fp64: the loss and both gradients within 1e-12 of the reference, relative to their size."""
    got = cgc_value_and_grads(backend, *args, **kwargs)
    expected = cgc_value_and_grads("reference", *args, **kwargs)
    for name, g, e in zip(("loss", "grad_orig", "grad_aug"), got, expected, strict=True):
        scale = e.abs().max().item() if e.numel() else 0.0
        error = (g - e).abs().max().item() if e.numel() else 0.0
        assert error <= 1e-12 * scale + 1e-14, f"{name}: error {error:.3g}, scale {scale:.3g}"
