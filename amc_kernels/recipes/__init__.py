"""Training recipes of the source papers, runnable on a laptop CPU and unchanged on a GPU.

``amc-kernels train`` runs one recipe (:func:`amc_kernels.recipes.train.train`) and
``amc-kernels compare`` several on the same data and seed
(:func:`amc_kernels.recipes.compare.compare`). Modules: ``config`` (settings and flags),
``data`` (shapes, digits, CIFAR, image folders), ``augment`` (batched views on the device),
``models``, ``train`` (recipes, evaluation, checkpoints), ``compare`` and ``figures``.
Importing this package loads only ``config``; the others need the ``train`` extra.
"""

from .config import DATASETS, LOSSES, MODELS, TrainConfig

__all__ = ["DATASETS", "LOSSES", "MODELS", "TrainConfig"]
