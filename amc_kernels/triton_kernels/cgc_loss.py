"""Triton cgc_loss (docs/design.md#26-cgc_loss): the CGC loss exactly, on the native h×w maps.

No size×size map exists, forward or backward. R_h (size×h) and R_w (size×w) are the bilinear
resizes to size (align_corners=False, torch's taps), r = Rᵀ1 and K = RᵀR per axis. Sample b's crop
(i, j, ch, cw) and flip give A_b = Resize_{ch→size}·Select_{i..i+ch}·R_h (size×h) and
B_b = Flip·Resize_{cw→size}·Select_{j..j+cw}·R_w (size×w), built with tensor index arithmetic
(O(B·size·(h + w)), no loop over crops, no host sync). With ε = MAP_EPS, X_b = A_b c_b B_bᵀ and
Y_b = R_h c'_b R_wᵀ: u_b = X_b/σ_b + ε, v_b = Y_b/σ'_b + ε, σ = Σup(c) + ε, σ' = ΣY + ε, and
  ⟨X, X⟩ = ⟨c, (AᵀA) c (BᵀB)⟩, ⟨X, Y⟩ = ⟨c, (AᵀR_h) c' (R_wᵀB)⟩, ⟨Y_b, Y_j⟩ = ⟨c'_b, K_h c'_j K_w⟩.
Kernels: the per-axis products AᵀA, AᵀR (batched matmul kernel), the per-sample sandwiches and
bilinear forms (sandwich kernel), the B×B Gram ⟨c'_b, Z_j⟩ (matmul kernel), the logits with an
online log-sum-exp (CE kernel). The backward recomputes all statistics, turns the softmax into
the cosine chain-rule coefficients (CE backward kernel: dL/du_b = α_b v_b + β_b u_b,
dL/dv_b = α_b u_b + Σ_j Ω_bj v_j, and each row's part of ∂L/∂τ = −(1/τ)·Σ_bj (∂L/∂logit_bj)·cos_bj,
summed in a fixed order), and pulls them back through the affine maps with three more
sandwiches and Ω·Z (matmul kernel); the O(B·h·w) combination is elementwise torch. Under
output_mask, ∂L/∂cam_orig alone skips the Ω matrix, the back sandwich and Ω·Z; ∂L/∂cam_aug
alone skips storing the two sandwiches of cam_orig. The kernels are in _cgc_kernels.py.
Memory: O(B·size·(h + w)) for the crop matrices, O(B·h·w) maps, O(B²) for the Gram and Ω
(docs/design.md#26-cgc_loss allows B², as the C++ kernels use). No atomics: every output has one
writer.
"""

from __future__ import annotations

import torch
import triton

from .._dispatch import interpreter_enabled
from .._register import forward_function, register_autograd
from .._spec import CGC_LOSS, MAP_EPS, compute_dtype
from ._cgc_kernels import (
    cgc_ce_bwd_kernel,
    cgc_ce_fwd_kernel,
    cgc_matmul_kernel,
    cgc_sandwich_kernel,
)
from ._common import launch, not_computed, scalar, triton_op
from ._tiles import MMA_FP64, MMA_IEEE


def _kind(dtype: torch.dtype) -> int:
    return MMA_FP64.value if dtype == torch.float64 else MMA_IEEE.value


def _matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a @ b in dtype for a [G, M, K] and b [G, K, N] (either may have G = 1 with stride 0)."""
    groups = max(a.shape[0], b.shape[0])
    (m, k), n = a.shape[1:], b.shape[2]
    out = torch.empty((groups, m, n), dtype=dtype, device=a.device)
    if interpreter_enabled():
        block, warps, stages = (16, 16, 16), 1, 1
    elif dtype == torch.float64:
        block, warps, stages = (16, 16, 16), 4, 1
    else:
        block, warps, stages = (32, 32, 32), 4, 2
    grid = (triton.cdiv(m, block[0]), triton.cdiv(n, block[1]), groups)
    launch(
        cgc_matmul_kernel, grid, a, b, out, m, n, k,
        a.stride(0) if a.shape[0] > 1 else 0, a.stride(1), a.stride(2),
        b.stride(0) if b.shape[0] > 1 else 0, b.stride(1), b.stride(2), *out.stride(),
        KIND=_kind(dtype), BLOCK_M=block[0], BLOCK_N=block[1], BLOCK_K=block[2],
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def _taps(
    dst: torch.Tensor, in_size: torch.Tensor, size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i0, i1, w0, w1) of torch's bilinear taps (align_corners=False) from in_size to size."""
    scale = in_size.to(dtype) / size
    src = (scale * (dst.to(dtype) + 0.5) - 0.5).clamp_min(0)
    i0 = torch.minimum(src.floor().long(), in_size - 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = (src - i0.to(dtype)).clamp(0, 1)
    return i0, i1, 1 - w1, w1


def _resize_matrix(n: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """R [size, n]: the bilinear resize n → size."""
    dst = torch.arange(size, device=device)
    i0, i1, w0, w1 = _taps(dst, torch.full_like(dst, n), size, dtype)
    cols = torch.arange(n, device=device)
    return w0[:, None] * (i0[:, None] == cols).to(dtype) + w1[:, None] * (i1[:, None] == cols).to(
        dtype
    )


def _crop_matrices(
    resize: torch.Tensor, start: torch.Tensor, length: torch.Tensor, flip: torch.Tensor | None
) -> torch.Tensor:
    """[B, size, n]: Resize_{len→size}·Select_{start..start+len}·R, rows reversed where flipped."""
    size = resize.shape[0]
    dst = torch.arange(size, device=resize.device).expand(start.shape[0], size)
    if flip is not None:
        dst = torch.where(flip[:, None], size - 1 - dst, dst)
    i0, i1, w0, w1 = _taps(dst, length[:, None], size, resize.dtype)
    start = start[:, None]
    return w0[..., None] * resize[start + i0] + w1[..., None] * resize[start + i1]


class _Axes:
    """The per-axis matrices of one batch: K, r of the frame and AᵀA, AᵀR, Aᵀ1 of each crop."""

    def __init__(self, n: int, size: int, start, length, flip, dtype, device) -> None:
        resize = _resize_matrix(n, size, dtype, device)
        crop = _crop_matrices(resize, start, length, flip)
        crop_t = crop.transpose(1, 2)
        self.gram = _matmul(resize.T[None], resize[None], dtype)[0]  # K = RᵀR
        self.sums = resize.sum(0)  # r = Rᵀ1
        self.crop_gram = _matmul(crop_t, crop, dtype)  # AᵀA
        self.crop_cross = _matmul(crop_t, resize[None], dtype)  # AᵀR
        self.crop_sums = crop.sum(1)  # Aᵀ1


def _sandwich(
    m: torch.Tensor,
    n: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    lv: torch.Tensor,
    rv: torch.Tensor,
    dtype: torch.dtype,
    store: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(L M R per sample or None, ⟨N, L M R⟩ [B], l_bᵀ N r_b [B]); 2-D L, R, l, r broadcast."""
    batch, h, w = m.shape
    out = torch.empty((batch, h, w), dtype=dtype, device=m.device) if store else None
    dot = torch.empty(batch, dtype=dtype, device=m.device)
    form = torch.empty(batch, dtype=dtype, device=m.device)

    def batch_stride(t: torch.Tensor, dims: int) -> int:
        return t.stride(0) if t.dim() == dims + 1 else 0

    block_h = max(16, triton.next_power_of_2(h))
    block_w = max(16, triton.next_power_of_2(w))
    warps = 1 if interpreter_enabled() else (8 if block_h * block_w >= 64 * 64 else 4)
    launch(
        cgc_sandwich_kernel, (batch,), m, n, left, right, lv, rv, dot if out is None else out,
        dot, form, h, w, *m.stride(), *n.stride(),
        batch_stride(left, 2), left.stride(-2), left.stride(-1),
        batch_stride(right, 2), right.stride(-2), right.stride(-1),
        batch_stride(lv, 1), batch_stride(rv, 1),
        STORE=store, FP64=dtype == torch.float64, KIND=_kind(dtype), BLOCK_H=block_h,
        BLOCK_W=block_w, num_warps=warps, num_stages=1,
    )  # fmt: skip
    return out, dot, form


class _Problem:
    """Axis matrices, statistics [5, B] (⟨X,X⟩, ⟨X,Y⟩, ΣX, Σup(c), ΣY), Gram ⟨Y_b, Y_j⟩ and
    Z_b = K_h c'_b K_w of one call; store_orig keeps the two sandwiches of cam_orig that
    ∂L/∂cam_orig pulls back through."""

    def __init__(self, cam_orig, cam_aug, crops, flips, size: int, store_orig: bool) -> None:
        batch, h, w = cam_orig.shape
        self.dtype = dtype = compute_dtype(cam_orig.dtype)
        self.size = size
        crops = crops.long()
        device = cam_orig.device
        self.rows = rows = _Axes(h, size, crops[:, 0], crops[:, 2], None, dtype, device)
        self.cols = cols = _Axes(w, size, crops[:, 1], crops[:, 3], flips.bool(), dtype, device)
        self.stats = torch.empty((5, batch), dtype=dtype, device=device)
        # (AᵀA) c (BᵀB): ⟨c, ·⟩ = ⟨X, X⟩, Aᵀ1ᵀ c Bᵀ1 = ΣX.
        self.self_term, self.stats[0], self.stats[2] = _sandwich(
            cam_orig, cam_orig, rows.crop_gram, cols.crop_gram, rows.crop_sums, cols.crop_sums,
            dtype, store_orig,
        )  # fmt: skip
        # (AᵀR_h) c' (R_wᵀB): ⟨c, ·⟩ = ⟨X, Y⟩; r_hᵀ c r_w = Σup(c).
        self.cross_term, self.stats[1], self.stats[3] = _sandwich(
            cam_aug, cam_orig, rows.crop_cross, cols.crop_cross.transpose(1, 2), rows.sums,
            cols.sums, dtype, store_orig,
        )  # fmt: skip
        # Z = K_h c' K_w; r_hᵀ c' r_w = ΣY.
        self.z, _, self.stats[4] = _sandwich(
            cam_aug, cam_aug, rows.gram, cols.gram, rows.sums, cols.sums, dtype, True
        )
        flat_aug = cam_aug.reshape(1, batch, h * w)
        self.yy = _matmul(flat_aug, self.z.view(1, batch, h * w).transpose(1, 2), dtype)[0]
        block = 16 if interpreter_enabled() else (32 if dtype == torch.float64 else 64)
        self.ce_launch = {"FP64": dtype == torch.float64, "BLOCK_B": block, "BLOCK_J": block}

    def cross_entropy(self, temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lse [B], loss_b [B]) of the B rows of logits; τ as [1] in the compute dtype."""
        batch = self.yy.shape[0]
        lse = torch.empty(batch, dtype=self.dtype, device=self.yy.device)
        loss = torch.empty_like(lse)
        launch(
            cgc_ce_fwd_kernel, (triton.cdiv(batch, self.ce_launch["BLOCK_B"]),), self.stats,
            self.yy, temperature, lse, loss, batch, self.size, *self.yy.stride(),
            num_warps=4, **self.ce_launch,
        )  # fmt: skip
        return lse, loss

    def coefficients(
        self, grad: torch.Tensor, temperature: torch.Tensor, store_omega: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ω_bj/σ'_j off the diagonal [B, B] (when store_omega, else empty), coef [6, B]) of
        cgc_ce_bwd_kernel."""
        batch = self.yy.shape[0]
        lse, _ = self.cross_entropy(temperature)
        scale = grad.reshape(1).to(self.dtype) / (batch * temperature)
        omega = lse.new_zeros((batch, batch) if store_omega else (0,))
        coef = lse.new_empty((6, batch))
        launch(
            cgc_ce_bwd_kernel, (triton.cdiv(batch, self.ce_launch["BLOCK_B"]),), self.stats,
            self.yy, temperature, scale, lse, omega, coef, batch, self.size,
            *self.yy.stride(), STORE_OMEGA=store_omega, num_warps=8, **self.ce_launch,
        )  # fmt: skip
        return omega, coef


def _temperature(
    temperature_tensor: torch.Tensor | None, temperature: float, like: torch.Tensor
) -> torch.Tensor:
    """τ as [1] in the compute dtype of `like`: temperature_tensor's value, else the float."""
    if temperature_tensor is None:
        return scalar(temperature, like)
    return temperature_tensor.reshape(1).to(compute_dtype(like.dtype))


@triton_op("cgc_loss_triton_fwd")
def cgc_loss_fwd(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    temperature_tensor: torch.Tensor | None,
    temperature: float,
    size: int,
) -> torch.Tensor:
    """The loss, a scalar in fp32 (fp64 for fp64 maps)."""
    batch = cam_orig.shape[0]
    if batch == 0:
        return cam_orig.new_zeros((), dtype=compute_dtype(cam_orig.dtype))
    tau = _temperature(temperature_tensor, temperature, cam_orig)
    _, loss = _Problem(cam_orig, cam_aug, crops, flips, size, False).cross_entropy(tau)
    return loss.sum() / batch


def _outer(coef: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """coef_b·left_b right_bᵀ [B, h, w] (left, right per sample [B, ·] or shared [·])."""
    return coef[:, None, None] * left[..., :, None] * right[..., None, :]


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x[:, None, None]


@triton_op("cgc_loss_triton_bwd")
def cgc_loss_bwd(
    grad: torch.Tensor,
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    crops: torch.Tensor,
    flips: torch.Tensor,
    temperature_tensor: torch.Tensor | None,
    temperature: float,
    size: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂L/∂cam_orig, ∂L/∂cam_aug) in the maps' dtype and ∂L/∂τ (0-d, in temperature_tensor's
    dtype), each empty when not requested (∂L/∂τ also without temperature_tensor)."""
    batch, h, w = cam_orig.shape
    want_orig, want_aug = output_mask[0], output_mask[1]
    want_tau = output_mask[2] and temperature_tensor is not None
    grad_orig, grad_aug = not_computed(cam_orig), not_computed(cam_aug)
    tau_like = cam_orig if temperature_tensor is None else temperature_tensor
    grad_tau = not_computed(tau_like)
    if batch == 0 or not (want_orig or want_aug or want_tau):
        return (
            torch.zeros_like(cam_orig) if want_orig else grad_orig,
            torch.zeros_like(cam_aug) if want_aug else grad_aug,
            torch.zeros_like(tau_like) if want_tau else grad_tau,
        )
    tau = _temperature(temperature_tensor, temperature, cam_orig)
    p = _Problem(cam_orig, cam_aug, crops, flips, size, want_orig)
    omega, (alpha, beta, omega_bb, omega_sum, omega_gram, row_tau) = p.coefficients(
        grad, tau, want_aug
    )
    if want_tau:  # ∂L/∂τ = −(1/τ)·Σ_b row_tau_b
        grad_tau = (-row_tau.sum() / tau[0]).to(tau_like.dtype)
    rows, cols = p.rows, p.cols
    xx, xy, sum_x, up_sum, sum_y = p.stats
    sigma, sigma_aug = up_sum + MAP_EPS, sum_y + MAP_EPS
    if want_orig:
        # dL/dc = Aᵀ(αv + βu)B/σ − ⟨αv + βu, X⟩/σ²·r_h r_wᵀ.
        u_dot_x = alpha * (xy / sigma_aug + MAP_EPS * sum_x) + beta * (xx / sigma + MAP_EPS * sum_x)
        crop_coef = (alpha + beta) * MAP_EPS / sigma
        frame_coef = -u_dot_x / (sigma * sigma)
        grad_orig = (
            _per_sample(alpha / sigma_aug) * p.cross_term + _per_sample(beta / sigma) * p.self_term
        ) / _per_sample(sigma)
        grad_orig = grad_orig + _outer(crop_coef, rows.crop_sums, cols.crop_sums)
        grad_orig = (grad_orig + _outer(frame_coef, rows.sums, cols.sums)).to(cam_orig.dtype)
    if want_aug:
        # dL/dc' = R_hᵀ(αu + Σ_j Ω_bj v_j)R_w/σ' − ⟨αu + Σ_j Ω_bj v_j, Y_b⟩/σ'²·r_h r_wᵀ,
        # with R_hᵀ X R_w = (R_hᵀA) c (BᵀR_w) and Σ_{j≠b} Ω_bj Z_j/σ'_j = Ω·Z.
        back_term, _, _ = _sandwich(
            cam_orig, cam_orig, rows.crop_cross.transpose(1, 2), cols.crop_cross, rows.sums,
            cols.sums, p.dtype, True,
        )  # fmt: skip
        mixed = _matmul(omega[None], p.z.view(1, batch, h * w), p.dtype)[0].view(batch, h, w)
        v_dot_y = alpha * (xy / sigma + MAP_EPS * sum_y) + omega_gram + omega_sum * MAP_EPS * sum_y
        aug_coef = MAP_EPS * (alpha + omega_sum) / sigma_aug - v_dot_y / (sigma_aug * sigma_aug)
        grad_aug = (
            _per_sample(alpha / sigma) * back_term + mixed + _per_sample(omega_bb / sigma_aug) * p.z
        ) / _per_sample(sigma_aug)
        grad_aug = (grad_aug + _outer(aug_coef, rows.sums, cols.sums)).to(cam_aug.dtype)
    return grad_orig, grad_aug, grad_tau


register_autograd(CGC_LOSS, "cgc_loss_triton_fwd", "cgc_loss_triton_bwd", "triton")
cgc_loss = forward_function(CGC_LOSS, "cgc_loss_triton_fwd")
