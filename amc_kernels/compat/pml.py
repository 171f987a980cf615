"""pytorch-metric-learning's ``SupConLoss`` and ``NTXentLoss`` (2.x), on supcon_loss.

PML takes embeddings [N, D] and labels [N], normalises the embeddings (cosine similarity) and,
unlike SupContrast, has no base temperature. ``SupConLoss`` is L_out per anchor reduced by
``AvgNonZeroReducer`` (the mean of the losses > 0: anchors without a positive drop out), and
``NTXentLoss`` is −log(e^{l_ap} / (e^{l_ap} + Σ_{n ∉ P(a)} e^{l_an})) per positive pair,
averaged over the pairs. Both give 0 unless some pair is positive and some pair is negative.
Only ``forward(embeddings, labels)`` is offered: miners (``indices_tuple``), ``ref_emb`` and
PML's distance/reducer/regularizer objects have no counterpart here.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks as check
from .. import functional
from .._spec import label_counts


class _PMLLoss(nn.Module):
    """forward(embeddings [N, D], labels [N]) as PML's; subclasses give :meth:`loss`."""

    def __init__(self, temperature: float, backend: str | None = None) -> None:
        super().__init__()
        self.temperature = check.positive(self._name(), "temperature", temperature)
        self.backend = backend

    @classmethod
    def _name(cls) -> str:
        return f"compat.pml.{cls.__name__}"

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple: object = None,
        ref_emb: object = None,
        ref_labels: object = None,
    ) -> torch.Tensor:
        for argument, value in (
            ("indices_tuple", indices_tuple),
            ("ref_emb", ref_emb),
            ("ref_labels", ref_labels),
        ):
            if value is not None:
                raise ValueError(
                    f"{self._name()}: {argument} is not supported (no miners or reference "
                    f"embeddings); pass embeddings and labels only"
                )
        if labels is None:
            raise ValueError(f"{self._name()}: labels are required, as in pytorch-metric-learning")
        loss = self.loss(embeddings, labels)
        some_negative = (labels != labels[:1]).any()  # PML gives 0 without a negative pair
        return torch.where(some_negative, loss, torch.zeros_like(loss))

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _supcon(
        self, embeddings: torch.Tensor, labels: torch.Tensor, **options: str
    ) -> torch.Tensor:
        # T_base = T: PML has no T/T_base factor
        return functional.supcon_loss(
            embeddings,
            labels,
            temperature=self.temperature,
            base_temperature=self.temperature,
            backend=self.backend,
            **options,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, backend={self.backend!r}"


class SupConLoss(_PMLLoss):
    """``pytorch_metric_learning.losses.SupConLoss(temperature=0.1)``: the mean of the
    per-anchor losses that are > 0."""

    def __init__(self, temperature: float = 0.1, backend: str | None = None) -> None:
        super().__init__(temperature, backend)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_anchor = self._supcon(embeddings, labels, reduction="none")
        nonzero = per_anchor > 0
        return (per_anchor * nonzero).sum() / nonzero.sum().clamp_min(1)


class NTXentLoss(_PMLLoss):
    """``pytorch_metric_learning.losses.NTXentLoss(temperature=0.07)``: the mean over positive
    pairs. Each label may occur at most twice (one positive per anchor, the SimCLR pairing):
    with more, PML leaves the other positives out of each pair's denominator, which the fused
    kernels do not compute (a ValueError; the check reads the labels, so it is skipped inside
    torch.compile and with AMC_KERNELS_CHECK_VALUES=0)."""

    def __init__(self, temperature: float = 0.07, backend: str | None = None) -> None:
        super().__init__(temperature, backend)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if check.value_checks_enabled() and isinstance(labels, torch.Tensor) and labels.numel():
            most = int(label_counts(labels).max())
            if most > 2:
                raise ValueError(
                    f"{self._name()}: a label occurs {most} times, but each may occur at most "
                    f"twice (one positive per anchor); with several positives use "
                    f"compat.pml.SupConLoss or amc_kernels.supcon_loss"
                )
        # one positive per anchor: the pair's denominator is every other row, and the mean
        # over pairs is the mean over the anchors that have a positive
        return self._supcon(embeddings, labels, no_positive="drop")
