"""A MoCo-style memory bank: :class:`FeatureQueue` (exported as ``amc_kernels.nn.FeatureQueue``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import _checks as check

_OP = "FeatureQueue"


class FeatureQueue(nn.Module):
    """A FIFO of the last ``size`` detached feature rows [D] and, if ``labeled``, their labels.

    ``enqueue(features [B, D], labels [B])`` writes the rows after the newest ones, overwriting
    the oldest once the queue is full (of a batch larger than the queue, the last ``size`` rows
    are kept). The stored rows feed a loss in two ways:

    - as negatives: ``supcon_loss(z, y, negatives=queue.features)`` (MoCo, ExCon's memory);
    - as extra positives and negatives: ``supcon_loss(*queue.with_batch(z, y),
      reduction="none")[:len(z)].mean()``: the batch's anchors contrasted with the batch and
      the queue, which are positives wherever the labels agree (pytorch-metric-learning's
      CrossBatchMemory).

    The rows are buffers (``.to()``, ``state_dict``), stored in ``dtype`` (features of another
    floating dtype are converted) and never receive gradients. ``enqueue`` reads only shapes;
    call it outside a compiled step (its position is a Python int).
    """

    def __init__(
        self,
        size: int,
        dim: int,
        *,
        labeled: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.size = check.positive_int(_OP, "size", size)
        self.dim = check.positive_int(_OP, "dim", dim)
        check.choice(_OP, "labeled", labeled, (True, False))
        if dtype not in check.FLOAT_DTYPES:
            raise TypeError(f"{_OP}: dtype must be a floating dtype, got {dtype}")
        self.labeled = labeled
        self.register_buffer("_features", torch.zeros(size, dim, dtype=dtype, device=device))
        shape = (size,) if labeled else (0,)
        self.register_buffer("_labels", torch.full(shape, -1, dtype=torch.long, device=device))
        self._next = 0  # the slot of the next row
        self._count = 0  # rows stored, at most size

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return self._count == self.size

    @property
    def features(self) -> torch.Tensor:
        """The stored rows [M, D], M = len(self), in slot order (a view)."""
        return self._features[: self._count]

    @property
    def labels(self) -> torch.Tensor:
        """The labels [M] of :attr:`features`."""
        if not self.labeled:
            raise ValueError(f"{_OP}: this queue keeps no labels; create it with labeled=True")
        return self._labels[: self._count]

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Store the rows of features [B, D] (and labels [B]), detached, replacing the oldest."""
        features = check.floating(_OP, "features", features)
        check.ndim(_OP, "features", features, (2,), f"[B, {self.dim}]")
        check.size(_OP, "features", features, 1, self.dim, "the queue's dim")
        check.same_device(_OP, "features", features, "the queue", self._features)
        if self.labeled:
            if labels is None:
                raise ValueError(f"{_OP}: labels are required (the queue was created labeled)")
            labels = check.integer(_OP, "labels", labels)
            check.ndim(_OP, "labels", labels, (1,), "[B]")
            check.size(_OP, "labels", labels, 0, features.shape[0], "one label per row")
            check.same_device(_OP, "labels", labels, "features", features)
        elif labels is not None:
            raise ValueError(f"{_OP}: labels given, but the queue was created with labeled=False")
        batch = min(features.shape[0], self.size)
        slots = (self._next + torch.arange(batch, device=features.device)) % self.size
        self._features.index_copy_(0, slots, features[-batch:].to(self._features.dtype))
        if self.labeled:
            self._labels.index_copy_(0, slots, labels[-batch:].long())
        self._next = (self._next + batch) % self.size
        self._count = min(self._count + batch, self.size)

    def with_batch(
        self, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N + M, D], labels [N + M]): the batch first, then the stored rows."""
        stored = self.labels  # refuses an unlabeled queue
        features = check.floating(_OP, "features", features)
        check.ndim(_OP, "features", features, (2,), f"[N, {self.dim}]")
        check.size(_OP, "features", features, 1, self.dim, "the queue's dim")
        labels = check.integer(_OP, "labels", labels)
        check.ndim(_OP, "labels", labels, (1,), "[N]")
        check.size(_OP, "labels", labels, 0, features.shape[0], "one label per row")
        queued = self.features.to(features.dtype)
        return torch.cat([features, queued]), torch.cat([labels.to(stored.dtype), stored])

    def get_extra_state(self) -> dict[str, Any]:
        return {"next": self._next, "count": self._count}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._next, self._count = int(state["next"]), int(state["count"])

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, dim={self.dim}, labeled={self.labeled}, "
            f"dtype={self._features.dtype}, stored={self._count}"
        )
