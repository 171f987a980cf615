"""SupContrast's ``losses.SupConLoss`` (HobbitLong/SupContrast @ 66a8fe5), on supcon_loss.

SupContrast takes features [bsz, n_views, ...] (flattened to [bsz, n_views, D]) that the model
has already L2-normalised (no normalisation inside), labels with bsz entries ([bsz] or
[bsz, 1]) or a [bsz, bsz] ``mask``, or neither (SimCLR); defaults T = T_base = 0.07.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks as check
from .. import functional

NAME = "compat.supcontrast.SupConLoss"


class SupConLoss(nn.Module):
    """``SupConLoss(temperature=0.07, contrast_mode="all", base_temperature=0.07)``;
    forward(features, labels=None, mask=None) -> the scalar loss.

    ``mask`` must be a class-equality mask, mask[i, j] = 1[y_i = y_j] (0/1, symmetric,
    reflexive, transitive): it is turned into the labels y_i = min{j : mask[i, j] ≠ 0}. Weighted
    or other masks raise a ValueError (the check reads the mask, so it is skipped inside
    torch.compile and with AMC_KERNELS_CHECK_VALUES=0).
    """

    def __init__(
        self,
        temperature: float | torch.Tensor = 0.07,
        contrast_mode: str = "all",
        base_temperature: float = 0.07,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.temperature, self.contrast_mode = temperature, contrast_mode
        self.base_temperature, self.backend = base_temperature, backend

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        features = check.tensor(NAME, "features", features)
        if features.dim() < 3:
            raise ValueError(
                f"{NAME}: features must be [bsz, n_views, ...] (at least 3 dimensions), got "
                f"shape {tuple(features.shape)}"
            )
        batch = features.shape[0]
        if labels is not None and mask is not None:
            raise ValueError(f"{NAME}: pass labels or mask, not both")
        if labels is not None:
            labels = check.tensor(NAME, "labels", labels).reshape(-1)
            if labels.shape[0] != batch:
                raise ValueError(
                    f"{NAME}: labels has {labels.shape[0]} entries but features has {batch} samples"
                )
        elif mask is not None:
            labels = mask_labels(mask, batch)
        return functional.supcon_loss(
            features.reshape(batch, features.shape[1], -1),
            labels,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            contrast_mode=self.contrast_mode,
            normalize=False,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, contrast_mode={self.contrast_mode!r}, "
            f"base_temperature={self.base_temperature}, backend={self.backend!r}"
        )


def mask_labels(mask: torch.Tensor, batch: int) -> torch.Tensor:
    """The labels y_i = min{j : mask[i, j] ≠ 0} of a class-equality mask [bsz, bsz]."""
    mask = check.tensor(NAME, "mask", mask)
    if mask.shape != (batch, batch):
        raise ValueError(
            f"{NAME}: mask must have shape [bsz, bsz] = {[batch, batch]}, got {tuple(mask.shape)}"
        )
    nonzero = mask != 0
    labels = nonzero.to(torch.uint8).argmax(dim=1)  # the first non-zero entry of each row
    if check.value_checks_enabled() and batch:
        binary = bool(((mask == 0) | (mask == 1)).all())
        if not binary or not bool((nonzero == (labels[:, None] == labels[None, :])).all()):
            raise ValueError(
                f"{NAME}: mask must be a class-equality mask, mask[i, j] = 1[y_i = y_j] (0 or "
                f"1, symmetric, with a 1 on the diagonal); weighted or other masks are not "
                f"supported by the fused kernels: pass labels instead"
            )
    return labels
