"""The numpy oracle of bilinear resampling shared by the map tests: per-axis matrices in float64.

It never calls amc_kernels.reference or F.interpolate.
"""

from __future__ import annotations

import numpy as np


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
