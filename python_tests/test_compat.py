"""amc_kernels.compat against the peers: pytorch-metric-learning (installed) and SupContrast (a
transcription of SOURCES.md §0, written here independently of amc_kernels.reference)."""

from __future__ import annotations

import pytest
import torch
from _helpers import skip_unless_usable

from amc_kernels.compat import pml, supcontrast

BACKENDS = [
    "reference",
    pytest.param("cpp", marks=pytest.mark.cpp),
    pytest.param("triton", marks=pytest.mark.triton),
]
PML_LABELS = [
    [0, 1, 0, 2, 1, 3, 3],  # a lonely sample (2): no positive
    [0, 1, 2, 0, 1, 2],  # the SimCLR pairing: one positive each
    [0, 0, 0, 0],  # no negative pair: PML gives 0
    [0, 1, 2, 3],  # no positive pair: 0
    [5],
]


def _value_and_grad(loss_fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = inputs[0].detach().clone().requires_grad_()
    loss = loss_fn(x, *inputs[1:])
    (grad,) = torch.autograd.grad(loss, x, allow_unused=True, materialize_grads=True)
    return loss.detach(), grad


def _assert_same(got: tuple, expected: tuple) -> None:
    torch.testing.assert_close(got[0], expected[0].to(got[0].dtype), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-14)


# --- pytorch-metric-learning ---


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("labels", PML_LABELS, ids=lambda v: "-".join(map(str, v)))
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_pml_losses_match_pml(backend: str, labels: list[int], temperature: float) -> None:
    skip_unless_usable(backend)
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    y = torch.tensor(labels)
    g = torch.Generator().manual_seed(len(labels))
    embeddings = torch.randn(len(labels), 5, generator=g, dtype=torch.float64) * 3
    peers = [(pml.SupConLoss, losses.SupConLoss)]
    if max(y.bincount()) <= 2:
        peers.append((pml.NTXentLoss, losses.NTXentLoss))
    for ours, theirs in peers:
        got = _value_and_grad(ours(temperature, backend=backend), embeddings, y)
        _assert_same(got, _value_and_grad(theirs(temperature=temperature), embeddings, y))


def test_pml_defaults_and_limits() -> None:
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    assert pml.SupConLoss().temperature == losses.SupConLoss().temperature == 0.1
    assert pml.NTXentLoss().temperature == losses.NTXentLoss().temperature == 0.07
    x, y = torch.randn(6, 4), torch.tensor([0, 0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="a label occurs 3 times, but each may occur at most"):
        pml.NTXentLoss()(x, y)
    with pytest.raises(ValueError, match="indices_tuple is not supported"):
        pml.SupConLoss()(x, y, indices_tuple=(y, y, y))
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        pml.NTXentLoss()(x, y, ref_emb=x)
    with pytest.raises(ValueError, match="labels are required"):
        pml.SupConLoss()(x)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        pml.SupConLoss(temperature=0.0)


# --- SupContrast ---


def supcontrast_loss(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    temperature: float = 0.07,
    contrast_mode: str = "all",
    base_temperature: float = 0.07,
) -> torch.Tensor:
    """SOURCES.md §0.1, step by step: view-major contrast rows, max-subtracted logits, the
    self column masked, L_out, n_r < 1e-6 → 1, −(T/T_base)·mean over the A anchors."""
    bsz, views = features.shape[:2]
    features = features.reshape(bsz, views, -1)
    if labels is not None:
        labels = labels.reshape(-1, 1)
        base = (labels == labels.T).to(features.dtype)
    elif mask is not None:
        base = mask.to(features.dtype)
    else:
        base = torch.eye(bsz, dtype=features.dtype)
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchors, anchor_count = (features[:, 0], 1) if contrast_mode == "one" else (contrast, views)
    logits = anchors @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    rows = anchors.shape[0]
    logits_mask = torch.ones(rows, views * bsz, dtype=features.dtype)
    logits_mask[torch.arange(rows), torch.arange(rows)] = 0
    positive = base.repeat(anchor_count, views) * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    count = positive.sum(1)
    count = torch.where(count < 1e-6, torch.ones_like(count), count)
    mean_log_prob_pos = (positive * log_prob).sum(1) / count
    return (-(temperature / base_temperature) * mean_log_prob_pos).view(anchor_count, bsz).mean()


def _unit_views(bsz: int, views: int, *rest: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, views, *rest, generator=g, dtype=torch.float64)
    return x / x.flatten(2).norm(dim=-1)[(...,) + (None,) * len(rest)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["all", "one"])
def test_supcontrast_matches_its_transcription(backend: str, mode: str) -> None:
    skip_unless_usable(backend)
    features = _unit_views(6, 2, 2, 3, seed=4)  # [bsz, n_views, ...]: flattened to D = 6
    labels = torch.tensor([0, 1, 0, 2, 1, 4])
    ours = supcontrast.SupConLoss(temperature=0.1, contrast_mode=mode, backend=backend)
    for kwargs in ({"labels": labels}, {"labels": labels[:, None]}, {}):
        got = _value_and_grad(lambda f, kw=kwargs: ours(f, **kw), features)
        theirs = _value_and_grad(
            lambda f, kw=kwargs: supcontrast_loss(f, temperature=0.1, contrast_mode=mode, **kw),
            features,
        )
        _assert_same(got, theirs)
    mask = (labels[:, None] == labels[None, :]).float()
    got = _value_and_grad(lambda f: ours(f, mask=mask), features)
    _assert_same(
        got,
        _value_and_grad(
            lambda f: supcontrast_loss(f, mask=mask, temperature=0.1, contrast_mode=mode), features
        ),
    )


def test_supcontrast_defaults_and_errors() -> None:
    loss = supcontrast.SupConLoss()
    assert (loss.temperature, loss.contrast_mode, loss.base_temperature) == (0.07, "all", 0.07)
    x = _unit_views(4, 2, 3, seed=5)
    labels = torch.tensor([0, 1, 0, 1])
    torch.testing.assert_close(loss(x, labels), supcontrast_loss(x, labels), rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match=r"features must be \[bsz, n_views, \.\.\.\]"):
        loss(x[:, 0], labels)
    with pytest.raises(ValueError, match="pass labels or mask, not both"):
        loss(x, labels, mask=torch.eye(4))
    with pytest.raises(ValueError, match="labels has 3 entries but features has 4 samples"):
        loss(x, labels[:3])
    with pytest.raises(ValueError, match="mask must have shape"):
        loss(x, mask=torch.eye(3))
    weighted = torch.eye(4) * 0.5 + 0.5
    with pytest.raises(ValueError, match="mask must be a class-equality mask"):
        loss(x, mask=weighted)
    not_transitive = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1]])
    with pytest.raises(ValueError, match="mask must be a class-equality mask"):
        loss(x[:3], mask=not_transitive)
