"""Fake (meta) kernels and autograd for the ops of amc_kernels._C, one module per op."""

from . import cgc_loss, selfcheck

__all__ = ["cgc_loss", "selfcheck"]
