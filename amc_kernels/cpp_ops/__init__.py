"""Fake (meta) kernels and autograd for the ops of amc_kernels._C, one module per op."""

from . import amc_loss, angular_distance, selfcheck

__all__ = ["amc_loss", "angular_distance", "selfcheck"]
