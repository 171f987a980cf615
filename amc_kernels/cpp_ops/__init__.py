"""Fake (meta) kernels and autograd for the ops of amc_kernels._C, one module per op."""

from . import selfcheck, supcon_loss

__all__ = ["selfcheck", "supcon_loss"]
