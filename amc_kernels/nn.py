"""Modules around the functional losses, and a Grad-CAM hook for any model."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from . import functional as F
from ._dispatch import check_backend_name
from ._spec import AMC_LOSS, CGC_LOSS, GRADCAM, SUPCON_LOSS, OpSpec

_amc, _supcon, _cgc, _gradcam = (s.defaults for s in (AMC_LOSS, SUPCON_LOSS, CGC_LOSS, GRADCAM))


def _checked(spec: OpSpec, backend: str | None, **options: object) -> None:
    """Settings are checked at construction, as the functional form checks them per call."""
    spec.check_options(options)
    check_backend_name(backend, "backend")


class AMCLoss(nn.Module):
    """Module form of :func:`amc_kernels.amc_loss`; forward(features [N, D], labels [N])."""

    def __init__(
        self,
        margin: float = _amc.margin,
        pairs: str = _amc.pairs,
        reduction: str = _amc.reduction,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _checked(AMC_LOSS, backend, margin=margin, pairs=pairs, reduction=reduction)
        self.margin, self.pairs, self.reduction, self.backend = margin, pairs, reduction, backend

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.amc_loss(
            features,
            labels,
            margin=self.margin,
            pairs=self.pairs,
            reduction=self.reduction,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, pairs={self.pairs!r}, reduction={self.reduction!r}, "
            f"backend={self.backend!r}"
        )


class SupConLoss(nn.Module):
    """Module form of :func:`amc_kernels.supcon_loss`.

    forward(features [N, V, D] or [N, D], labels [N] or None, negatives [M, D] or None). A
    learnable temperature: pass an ``nn.Parameter`` (0-d), which becomes this module's.
    """

    def __init__(
        self,
        temperature: float | torch.Tensor = _supcon.temperature,
        base_temperature: float = _supcon.base_temperature,
        contrast_mode: str = _supcon.contrast_mode,
        normalize: bool = _supcon.normalize,
        reduction: str = _supcon.reduction,
        no_positive: str = _supcon.no_positive,
        ignore_index: int | None = _supcon.ignore_index,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _checked(
            SUPCON_LOSS,
            backend,
            temperature=temperature,
            base_temperature=base_temperature,
            contrast_mode=contrast_mode,
            normalize=normalize,
            reduction=reduction,
            no_positive=no_positive,
            ignore_index=ignore_index,
        )
        self.temperature, self.base_temperature = temperature, base_temperature
        self.contrast_mode, self.normalize = contrast_mode, normalize
        self.reduction, self.no_positive, self.ignore_index = reduction, no_positive, ignore_index
        self.backend = backend

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return F.supcon_loss(
            features,
            labels,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            contrast_mode=self.contrast_mode,
            negatives=negatives,
            normalize=self.normalize,
            reduction=self.reduction,
            no_positive=self.no_positive,
            ignore_index=self.ignore_index,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={_number(self.temperature)}, base_temperature={self.base_temperature}, "
            f"contrast_mode={self.contrast_mode!r}, normalize={self.normalize}, "
            f"reduction={self.reduction!r}, no_positive={self.no_positive!r}, "
            f"ignore_index={self.ignore_index}, backend={self.backend!r}"
        )


def _number(value: float | torch.Tensor) -> str:
    """A temperature as extra_repr shows it: the number, or "tensor(...)" for a tensor one."""
    if isinstance(value, torch.Tensor):
        return (
            f"tensor({value.detach().cpu().item():g})" if value.device.type != "meta" else "tensor"
        )
    return str(value)


class CGCLoss(nn.Module):
    """Module form of :func:`amc_kernels.cgc_loss`; forward(cam_orig, cam_aug, crops, flips)."""

    def __init__(
        self,
        temperature: float = _cgc.temperature,
        size: int = _cgc.size,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _checked(CGC_LOSS, backend, temperature=temperature, size=size)
        self.temperature, self.size, self.backend = temperature, size, backend

    def forward(
        self,
        cam_orig: torch.Tensor,
        cam_aug: torch.Tensor,
        crops: torch.Tensor,
        flips: torch.Tensor,
    ) -> torch.Tensor:
        return F.cgc_loss(
            cam_orig,
            cam_aug,
            crops,
            flips,
            temperature=self.temperature,
            size=self.size,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, size={self.size}, backend={self.backend!r}"


class GradCAMResult(NamedTuple):
    maps: torch.Tensor  # [B, H', W']
    logits: torch.Tensor  # [B, C], the model's output
    targets: torch.Tensor  # [B], the explained classes


class GradCAM(nn.Module):
    """Batched Grad-CAM of a named layer of any classifier.

    ``GradCAM(model, "layer4")(images, targets=None)`` runs the model once, takes the gradient
    of Σ_b logits[b, t_b] with respect to the layer's output A (t = the predicted classes when
    targets is None) and returns :func:`amc_kernels.gradcam` maps [B, H', W']. With
    ``create_graph=True`` the maps stay differentiable in the model's parameters (CGC's
    training signal); otherwise they are detached. The model's train/eval mode is unchanged.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        *,
        weighting: str = _gradcam.weighting,
        relu: bool = _gradcam.relu,
        normalize: str | None = _gradcam.normalize,
        output_size: int | tuple[int, int] | None = _gradcam.output_size,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _checked(
            GRADCAM,
            backend,
            weighting=weighting,
            relu=relu,
            normalize=normalize,
            output_size=output_size,
        )
        modules = dict(model.named_modules())
        if layer not in modules:
            names = ", ".join(name for name in modules if name) or "(none)"
            raise ValueError(
                f"GradCAM: layer {layer!r} is not a submodule of the model; choose one of: {names}"
            )
        self.model, self.layer = model, layer
        self.target_layer = modules[layer]
        self.weighting, self.relu, self.normalize = weighting, relu, normalize
        self.output_size, self.backend = output_size, backend

    def explain(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        create_graph: bool = False,
    ) -> GradCAMResult:
        """Maps, logits and targets in one forward pass (the logits keep their graph)."""
        captured: list[torch.Tensor] = []

        def keep_output(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"GradCAM: layer {self.layer!r} must return a tensor, "
                    f"got {type(output).__name__}"
                )
            if not output.requires_grad:  # frozen model or input: still explainable
                output = output.detach().requires_grad_()
            captured.append(output)
            return output

        handle = self.target_layer.register_forward_hook(keep_output)
        try:
            with torch.enable_grad():
                logits = self.model(inputs)
                targets = self._targets(logits, targets)
                score = logits.gather(1, targets[:, None]).sum()
                (gradients,) = torch.autograd.grad(
                    score, captured[-1], create_graph=create_graph, retain_graph=True
                )
        finally:
            handle.remove()
        activations = captured[-1]
        if not create_graph:
            activations = activations.detach()
        maps = F.gradcam(
            activations,
            gradients,
            weighting=self.weighting,
            relu=self.relu,
            normalize=self.normalize,
            output_size=self.output_size,
            backend=self.backend,
        )
        return GradCAMResult(maps, logits, targets)

    @staticmethod
    def _targets(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        if targets is None:
            return logits.detach().argmax(dim=1)
        if targets.shape != (logits.shape[0],):
            raise ValueError(
                f"GradCAM: targets must have shape [{logits.shape[0]}], got {tuple(targets.shape)}"
            )
        return targets.to(logits.device).long()

    def forward(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        create_graph: bool = False,
    ) -> torch.Tensor:
        return self.explain(inputs, targets, create_graph=create_graph).maps

    def extra_repr(self) -> str:
        return (
            f"layer={self.layer!r}, weighting={self.weighting!r}, relu={self.relu}, "
            f"normalize={self.normalize!r}, output_size={self.output_size}, "
            f"backend={self.backend!r}"
        )
