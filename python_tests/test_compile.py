"""Training steps under torch.compile (README "torch.compile"): Grad-CAM and the class
activation map inside a compiled step, a compiled model explained eagerly, and the first
dispatch of an op inside a compiled region.

Every compiled result equals eager (float64, aot_eager on CPU). ResNet-18 (torchvision,
weights=None) on 2 images of 64×64 (a 2×2 layer4): each of its compiles takes ~5-15 s on 2
cores; the default-config cases use a small net.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import amc_kernels
from amc_kernels import _dispatch
from amc_kernels.nn import GradCAM

torchvision = pytest.importorskip("torchvision")

BACKEND = "aot_eager"  # the graphs dynamo captures, run by AOTAutograd, without inductor's build


class SmallNet(nn.Module):
    """conv → BN → ReLU → conv ("features") → GAP → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.features = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.stem(x)).mean(dim=(2, 3)))


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=4).double()


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return SmallNet().double()


def batch(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, side, side, generator=gen, dtype=torch.float64), torch.tensor([1, 3])


def gradcam_step(cam: GradCAM, create_graph: bool):
    """ExCon-like (maps detached) or CGC-like (a loss on the maps, create_graph=True)."""

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, logits, _ = cam.explain(x, y, create_graph=create_graph)
        loss = TF.cross_entropy(logits, y)
        if create_graph:
            loss = loss + maps.square().mean()
        return loss, maps

    return step


def run_step(model: nn.Module, step, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """[loss, maps, every parameter's gradient] after loss.backward()."""
    model.zero_grad()
    loss, maps = step(x, y)
    loss.backward()
    return [loss.detach(), maps.detach(), *(p.grad.clone() for p in model.parameters())]


def assert_all_close(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(g, e, msg=lambda m, i=index: f"output {i}: {m}")


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# --- ResNet-18: one graph with trace_autograd_ops -----------------------------------------------


@pytest.mark.parametrize("create_graph", [False, True], ids=["detached", "create_graph"])
def test_compiled_resnet18_step_with_gradcam_matches_eager(create_graph: bool) -> None:
    """fullgraph=True: no graph break at the hook or at torch.autograd.grad."""
    x, y = batch(64)
    model = resnet18()
    step = gradcam_step(GradCAM(model, model.layer4, weighting="elementwise"), create_graph)
    expected = run_step(model, step, x, y)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(step, fullgraph=True, backend=BACKEND)
        got = run_step(model, compiled, x, y)
    assert_all_close(got, expected)


def test_compiled_resnet18_step_with_class_activation_map_matches_eager() -> None:
    """CAM = Grad-CAM for a GAP → Linear head, with no autograd.grad: fullgraph, any config."""
    x, y = batch(64)
    model = resnet18()
    body = nn.Sequential(*list(model.children())[:-2])  # up to layer4

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activations = body(x)
        logits = model.fc(activations.mean(dim=(2, 3)))
        maps = amc_kernels.class_activation_map(activations, model.fc.weight, y)
        return TF.cross_entropy(logits, y) + maps.relu().square().mean(), maps

    expected = run_step(model, step, x, y)
    got = run_step(model, torch.compile(step, fullgraph=True, backend=BACKEND), x, y)
    assert_all_close(got, expected)


# --- the default dynamo config, and compiled models ---------------------------------------------


@pytest.mark.parametrize("create_graph", [False, True], ids=["detached", "create_graph"])
def test_compiled_step_with_the_default_config_matches_eager(create_graph: bool) -> None:
    """Without trace_autograd_ops the graph breaks at A and at torch.autograd.grad; with
    create_graph=True the model runs outside the graph (it must be differentiated twice)."""
    x, y = batch(8)
    model = small_net()
    step = gradcam_step(GradCAM(model, "features"), create_graph)
    expected = run_step(model, step, x, y)
    got = run_step(model, torch.compile(step, backend=BACKEND), x, y)
    assert_all_close(got, expected)


def test_a_compiled_model_explained_eagerly_matches_eager() -> None:
    x, y = batch(8)
    model = small_net()
    step = gradcam_step(GradCAM(model, "features"), False)
    expected = run_step(model, step, x, y)
    compiled = torch.compile(model, backend=BACKEND)
    cam = GradCAM(compiled, "features")  # the names are those of the wrapped model
    assert cam.target_layer is model.features
    got = run_step(model, gradcam_step(cam, False), x, y)
    assert_all_close(got, expected)
    plain = compiled(x)  # the hook does nothing outside explain
    torch.testing.assert_close(plain, model(x))


def test_a_compiled_model_refuses_create_graph_clearly() -> None:
    x, y = batch(8)
    model = small_net()
    cam = GradCAM(torch.compile(model, backend=BACKEND), model.features)
    with pytest.raises(RuntimeError, match=r"create_graph=True .*'features' twice.*trace_autograd"):
        cam.explain(x, y, create_graph=True)


# --- the first call of an op inside the compiled region -----------------------------------------


def test_fullgraph_compile_as_the_first_call_of_the_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backends' modules are imported while tracing, before the registry is read (an empty
    registry is the state of a fresh process: nothing was dispatched yet)."""
    monkeypatch.setattr(_dispatch, "_REGISTRY", {})
    a, g = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4)
    x, labels = torch.randn(6, 5), torch.tensor([0, 1, 0, 1, 2, 2])

    def fn(*args: torch.Tensor) -> torch.Tensor:
        a, g, x, labels = args
        return amc_kernels.gradcam(a, g).sum() + amc_kernels.supcon_loss(x, labels)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. dynamo tracing through a functools.cache
        got = torch.compile(fn, fullgraph=True, backend=BACKEND)(a, g, x, labels)
    torch.testing.assert_close(got, fn(a, g, x, labels))
