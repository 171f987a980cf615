"""The numpy oracle of bilinear resampling shared by the map tests: per-axis matrices in float64.

It never calls amc_kernels.reference or F.interpolate; assert_np_resize_matches_interpolate is
the one place where it meets F.interpolate, to check the convention.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F


def np_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: src = (dst + ½)·n_in/n_out − ½, clamped below at 0; the upper neighbour
    is clamped at the last pixel (PyTorch's align_corners=False convention)."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in))
    for dst in range(n_out):
        src = max(scale * (dst + 0.5) - 0.5, 0.0)
        i0 = min(int(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0 if i1 > i0 else 0.0  # a clamped neighbour: the edge pixel, exactly
        m[dst, i0] += 1.0 - lam
        m[dst, i1] += lam
    return m


def np_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one [h, w] map to `size`."""
    return np_resize_matrix(x.shape[0], size[0]) @ x @ np_resize_matrix(x.shape[1], size[1]).T


def assert_np_resize_matches_interpolate(sizes: Iterable[tuple[int, int, int, int]]) -> None:
    """np_resize of a random h × w map to out_h × out_w is F.interpolate's bilinear resize
    (align_corners=False), for each (h, w, out_h, out_w) in `sizes`."""
    gen = np.random.default_rng(0)
    for h, w, out_h, out_w in sizes:
        x = gen.standard_normal((h, w))
        torch_out = F.interpolate(
            torch.from_numpy(x)[None, None], size=(out_h, out_w), mode="bilinear"
        )[0, 0]
        np.testing.assert_allclose(np_resize(x, (out_h, out_w)), torch_out.numpy(), atol=1e-14)
