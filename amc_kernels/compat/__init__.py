"""Drop-in losses for code ported from other libraries, on amc_kernels' fused kernels.

Each class has its peer's name, constructor defaults and forward signature, and gives the peer's
value and gradients (README "Porting from ..." lists each difference of the native API):

- :mod:`amc_kernels.compat.pml`: pytorch-metric-learning's ``SupConLoss`` and ``NTXentLoss``;
- :mod:`amc_kernels.compat.supcontrast`: SupContrast's ``losses.SupConLoss`` (HobbitLong).
"""

from . import pml, supcontrast

__all__ = ["pml", "supcontrast"]
