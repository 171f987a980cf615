"""amc-kernels: fused kernels for explanation-aware contrastive learning.

Ops (each with a pure-PyTorch reference in :mod:`amc_kernels.reference`): angular_distance,
amc_loss, supcon_loss, gradcam, class_activation_map, cgc_loss and saliency_mask. Choose a
backend per call (``backend=``), per block (:func:`use_backend`) or per process
(``AMC_KERNELS_BACKEND``); by default the fastest usable one is picked. Backends are imported
on first use, from the table in :mod:`amc_kernels._dispatch`.

Importing checks the build record of the compiled kernels against the installed torch first,
and raises :class:`TorchMismatchError` (an ImportError that names the fix) when they were built
for another torch release; a missing or unloadable ``amc_kernels._C`` only warns.
"""

from . import _extension, nn
from ._dispatch import BACKENDS, BackendUnavailableError, use_backend
from ._extension import TorchMismatchError
from ._version import __version__
from .functional import (
    amc_loss,
    angular_distance,
    cgc_loss,
    class_activation_map,
    gradcam,
    saliency_mask,
    supcon_loss,
)

_extension.check_build()  # before anything loads amc_kernels._C

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "TorchMismatchError",
    "__version__",
    "amc_loss",
    "angular_distance",
    "cgc_loss",
    "class_activation_map",
    "gradcam",
    "nn",
    "saliency_mask",
    "supcon_loss",
    "use_backend",
]
