"""Modules around the functional losses, a Grad-CAM hook for any model, and a memory bank."""

from __future__ import annotations

import weakref
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from . import functional as F
from ._dispatch import check_backend_name
from ._queue import FeatureQueue
from ._spec import AMC_LOSS, CGC_LOSS, GRADCAM, SUPCON_LOSS, OpSpec

__all__ = ["AMCLoss", "CGCLoss", "FeatureQueue", "GradCAM", "GradCAMResult", "SupConLoss"]

_amc, _supcon, _cgc, _gradcam = (s.defaults for s in (AMC_LOSS, SUPCON_LOSS, CGC_LOSS, GRADCAM))


def _checked(spec: OpSpec, backend: str | None, **options: object) -> None:
    """Settings are checked at construction, as the functional form checks them per call."""
    spec.check_options(options)
    check_backend_name(backend, "backend")


class AMCLoss(nn.Module):
    """Module form of :func:`amc_kernels.amc_loss`; forward(features [N, D], labels [N]).

    The default pairs="all" (every i < j) differs from the official code and the recipes'
    CLI, which use pairs="halves", the pairs (k, k + ⌊N/2⌋).
    """

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
    """Module form of :func:`amc_kernels.cgc_loss`; forward(cam_orig, cam_aug, crops, flips).
    A learnable temperature: pass an ``nn.Parameter`` (0-d), which becomes this module's."""

    def __init__(
        self,
        temperature: float | torch.Tensor = _cgc.temperature,
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
        return (
            f"temperature={_number(self.temperature)}, size={self.size}, backend={self.backend!r}"
        )


class GradCAMResult(NamedTuple):
    maps: torch.Tensor  # [B, H', W']
    logits: torch.Tensor  # [B, C], the model's output
    targets: torch.Tensor  # [B], the explained classes


class _Capture:
    """What the layer's hook reads and writes; armed only while :meth:`GradCAM.explain` runs.

    ``traced``: explain is being traced by torch.compile with
    ``torch._dynamo.config.trace_autograd_ops``, so its ``torch.autograd.grad`` joins the graph
    that computes A. Otherwise a compiled model must end its graph at A (a graph break) for
    eager autograd to differentiate with respect to it.
    """

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.armed = self.traced = self.create_graph = self.removed = False
        self.output: torch.Tensor | None = None


@torch.compiler.disable
def _eager_gradients(cam: GradCAM, inputs: torch.Tensor, targets: torch.Tensor | None) -> tuple:
    """:meth:`GradCAM._gradients` with create_graph=True outside the graph (one graph break),
    so that the maps' backward can differentiate the model's layers a second time."""
    return cam._gradients(inputs, targets, True)


@torch.compiler.disable
def _refuse(message: str) -> None:
    """Raised eagerly: an exception raised while tracing sends the frame back to eager, where
    the condition that raised it (torch.compiler.is_compiling()) no longer holds."""
    raise RuntimeError(message)


def _keep_output(
    state: _Capture, module: nn.Module, args: object, output: object
) -> torch.Tensor | None:
    """The forward hook of GradCAM's layer: records A while armed, does nothing otherwise."""
    if not state.armed:
        return None
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"GradCAM: layer {state.layer!r} must return a tensor, got {type(output).__name__}"
        )
    if output.dim() != 4:
        raise ValueError(
            f"GradCAM: layer {state.layer!r} returned shape {tuple(output.shape)}, but Grad-CAM "
            f"needs a [B, K, H, W] feature map: choose a convolutional layer (e.g. the last "
            f"block before the global pooling)"
        )
    if not output.requires_grad:  # frozen model or input: still explainable
        output = output.detach().requires_grad_()
    state.output = output
    if torch.compiler.is_compiling() and not state.traced:  # a compiled model, eager autograd
        if state.create_graph:
            _refuse(
                f"GradCAM: create_graph=True would differentiate the compiled layers after "
                f"{state.layer!r} twice, which torch.compile cannot do. Compile the whole step "
                f"that calls GradCAM with torch._dynamo.config.trace_autograd_ops = True, or "
                f"use amc_kernels.class_activation_map for a GAP → Linear head"
            )
        torch._dynamo.graph_break()  # A leaves this graph and enters the next one as an input
    return output


def _find_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of `layer`, given by name or as a submodule; a compiled model's names are
    those of the model it wraps."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    modules = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer:
                return name, module
        raise ValueError(
            f"GradCAM: layer {type(layer).__name__} is not a submodule of the model; pass one "
            f"of its submodules (model.layer4) or its name"
        )
    if not isinstance(layer, str):
        raise TypeError(
            f"GradCAM: layer must be a submodule of the model or its name, got "
            f"{type(layer).__name__}"
        )
    if layer not in modules:
        names = ", ".join(name for name in modules if name) or "(none)"
        raise ValueError(
            f"GradCAM: layer {layer!r} is not a submodule of the model; choose one of: {names}"
        )
    return layer, modules[layer]


class GradCAM(nn.Module):
    """Batched Grad-CAM of a layer of any classifier.

    ``GradCAM(model, "layer4")(images, targets=None)`` (or ``GradCAM(model, model.layer4)``)
    runs the model once, takes the gradient of Σ_b logits[b, t_b] with respect to the layer's
    output A [B, K, H, W] (t = the predicted classes when targets is None) and returns
    :func:`amc_kernels.gradcam` maps [B, H', W']. With ``create_graph=True`` the maps stay
    differentiable in the model's parameters (CGC's training signal); otherwise they are
    detached. The model's train/eval mode is unchanged.

    The layer's forward hook is registered once, here, and does nothing unless an explanation
    is running; :meth:`remove` (or leaving a ``with GradCAM(...) as cam:`` block, or dropping
    the GradCAM) takes it off. Under ``torch.compile``: compile the step that calls GradCAM with
    ``torch._dynamo.config.trace_autograd_ops = True`` for one graph (``fullgraph=True``), with
    or without ``create_graph``; without that setting, or with a compiled model, the graph
    breaks at A and at the gradient, and ``create_graph=True`` is refused (README).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module,
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
        self.layer, self.target_layer = _find_layer(model, layer)
        self.model = model
        self.weighting, self.relu, self.normalize = weighting, relu, normalize
        self.output_size, self.backend = output_size, backend
        self._capture = _Capture(self.layer)
        handle = self.target_layer.register_forward_hook(partial(_keep_output, self._capture))
        self._release = weakref.finalize(self, handle.remove)

    def remove(self) -> None:
        """Take the hook off the layer; the GradCAM cannot explain afterwards."""
        self._release()
        self._capture.removed = True

    def __enter__(self) -> GradCAM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def explain(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        create_graph: bool = False,
    ) -> GradCAMResult:
        """Maps, logits and targets in one forward pass (the logits keep their graph)."""
        state = self._capture
        if state.removed:
            raise RuntimeError("GradCAM: remove() was called; create a new GradCAM")
        compiling = torch.compiler.is_compiling()
        state.traced = compiling and torch._dynamo.config.trace_autograd_ops
        if compiling and not state.traced and create_graph:
            result = _eager_gradients(self, inputs, targets)
        else:
            result = self._gradients(inputs, targets, create_graph)
        activations, gradients, logits, targets = result
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

    def _gradients(
        self, inputs: torch.Tensor, targets: torch.Tensor | None, create_graph: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, ∂score/∂A, logits, targets), score = Σ_b logits[b, t_b]."""
        with torch.enable_grad():
            activations, logits = self._forward(inputs, create_graph)
            targets = self._targets(logits, targets)
            score = logits.gather(1, targets[:, None]).sum()
            (gradients,) = torch.autograd.grad(
                score, activations, create_graph=create_graph, retain_graph=True
            )
        return activations, gradients, logits, targets

    def _forward(self, inputs: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, ...]:
        """(A, logits) from one forward pass of the model with the hook armed."""
        state = self._capture
        state.create_graph, state.armed, state.output = create_graph, True, None
        if torch.compiler.is_compiling():  # no try: the graph cannot resume after a break in one
            logits = self.model(inputs)
        else:
            try:
                logits = self.model(inputs)
            finally:
                state.armed = False
        activations, state.armed, state.output = state.output, False, None
        if activations is None:
            raise RuntimeError(
                f"GradCAM: layer {self.layer!r} did not run in the model's forward pass"
            )
        return activations, logits

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
