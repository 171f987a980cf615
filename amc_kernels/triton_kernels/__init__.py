"""Triton kernels, one module per op, registered as the `triton` backend when triton imports."""
