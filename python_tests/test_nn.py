"""Modules (docs/design.md#28-modules-and-helpers): the loss modules, and GradCAM on a real
model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import amc_kernels
from amc_kernels import functional
from amc_kernels.nn import AMCLoss, CGCLoss, GradCAM, SupConLoss


class TinyNet(nn.Module):
    """conv → ReLU → conv ("features") → GAP → Linear, the AMC/CGC head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.features = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.stem(x)).mean(dim=(2, 3)))


def reference(op, *args, **kwargs) -> torch.Tensor:
    return op(*args, backend="reference", **kwargs)


@pytest.fixture
def net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().double()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 8, 8, dtype=torch.float64)


# --- loss modules ---


def test_loss_modules_match_the_functions() -> None:
    x = torch.randn(8, 2, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2])
    supcon = SupConLoss(temperature=0.2, contrast_mode="one", reduction="none")
    torch.testing.assert_close(
        supcon(x, labels),
        reference(
            functional.supcon_loss,
            x,
            labels,
            temperature=0.2,
            contrast_mode="one",
            reduction="none",
        ),
    )
    amc = AMCLoss(margin=0.7, pairs="halves")
    torch.testing.assert_close(
        amc(x[:, 0], labels),
        reference(functional.amc_loss, x[:, 0], labels, margin=0.7, pairs="halves"),
    )
    cams = torch.rand(2, 3, 3, dtype=torch.float64)
    crops = torch.tensor([[0, 0, 10, 10], [1, 2, 5, 7]])
    flips = torch.tensor([True, False])
    cgc = CGCLoss(temperature=0.3, size=10)
    torch.testing.assert_close(
        cgc(cams, cams.flip(-1), crops, flips),
        reference(functional.cgc_loss, cams, cams.flip(-1), crops, flips, temperature=0.3, size=10),
    )


def test_modules_show_their_settings(net: TinyNet) -> None:
    assert "margin=0.5, pairs='all'" in repr(AMCLoss())
    assert "temperature=0.1, base_temperature=0.07" in repr(SupConLoss())
    assert "temperature=0.5, size=224" in repr(CGCLoss())
    assert "layer='features', weighting='mean', relu=True" in repr(GradCAM(net, "features"))


def test_module_settings_are_validated_at_construction() -> None:
    with pytest.raises(ValueError, match="amc_loss: margin must be > 0"):
        AMCLoss(margin=-1.0)
    with pytest.raises(ValueError, match="amc_loss: pairs must be one of 'all', 'halves'"):
        AMCLoss(pairs="x")
    with pytest.raises(ValueError, match="supcon_loss: temperature must be > 0"):
        SupConLoss(temperature=-1)
    with pytest.raises(ValueError, match="gradcam: normalize must be one of"):
        GradCAM(nn.Conv2d(1, 1, 1), "", normalize="l2")
    with pytest.raises(ValueError, match="backend must be one of"):
        CGCLoss(backend="gpu")


# --- GradCAM ---


def _manual_gradcam(net: TinyNet, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    activations = net.features(net.stem(images))
    logits = net.fc(activations.mean(dim=(2, 3)))
    score = logits.gather(1, targets[:, None]).sum()
    (gradients,) = torch.autograd.grad(score, activations)
    return reference(
        functional.gradcam, activations, gradients, normalize="minmax", output_size=(8, 8)
    )


def test_gradcam_explains_the_predicted_classes(net: TinyNet, images: torch.Tensor) -> None:
    cam = GradCAM(net, "features", normalize="minmax", output_size=8)
    result = cam.explain(images)
    predicted = net(images).argmax(dim=1)
    assert torch.equal(result.targets, predicted)
    assert result.maps.shape == (3, 8, 8)
    torch.testing.assert_close(result.maps, _manual_gradcam(net, images, predicted))
    assert not result.maps.requires_grad


def test_gradcam_explains_given_targets(net: TinyNet, images: torch.Tensor) -> None:
    targets = torch.tensor([3, 0, 1])
    maps = GradCAM(net, "features", normalize="minmax", output_size=8)(images, targets)
    torch.testing.assert_close(maps, _manual_gradcam(net, images, targets))


def test_gradcam_at_the_gap_layer_equals_the_class_activation_map(
    net: TinyNet, images: torch.Tensor
) -> None:
    targets = torch.tensor([1, 2, 3])
    maps = GradCAM(net, "features", relu=False)(images, targets)
    activations = net.features(net.stem(images))
    expected = amc_kernels.class_activation_map(activations, net.fc.weight, targets)
    torch.testing.assert_close(maps, expected)


def test_create_graph_trains_through_the_maps(net: TinyNet, images: torch.Tensor) -> None:
    maps = GradCAM(net, "features", weighting="elementwise")(images, create_graph=True)
    assert maps.requires_grad
    maps.sum().backward()
    assert net.stem[0].weight.grad is not None
    assert net.fc.weight.grad.abs().sum() > 0  # through the gradients G = W[t] / (H·W)


def test_frozen_models_and_modes_are_left_alone(net: TinyNet, images: torch.Tensor) -> None:
    net.eval().requires_grad_(False)
    with torch.no_grad():
        maps = GradCAM(net, "features")(images)
    assert maps.shape == (3, 8, 8) and torch.isfinite(maps).all()
    assert not net.training
    assert all(p.grad is None for p in net.parameters())


def test_gradcam_errors(net: TinyNet, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"layer 'layer4' is not a submodule.*features"):
        GradCAM(net, "layer4")
    with pytest.raises(ValueError, match=r"targets must have shape \[3\]"):
        GradCAM(net, "features")(images, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="gradcam: normalize must be one of"):
        GradCAM(net, "features", normalize="l2")(images)


def test_gradcam_takes_the_layer_as_a_module(net: TinyNet, images: torch.Tensor) -> None:
    """As pytorch-grad-cam takes it: GradCAM(model, model.layer4)."""
    targets = torch.tensor([3, 0, 1])
    by_module = GradCAM(net, net.features)
    assert by_module.layer == "features" and "layer='features'" in repr(by_module)
    by_name = GradCAM(net, "features")
    torch.testing.assert_close(by_module(images, targets), by_name(images, targets))


def test_gradcam_layer_errors(net: TinyNet, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="layer Conv2d is not a submodule of the model"):
        GradCAM(net, nn.Conv2d(6, 5, 3))
    with pytest.raises(TypeError, match="layer must be a submodule of the model or its name"):
        GradCAM(net, 3)
    with pytest.raises(ValueError, match=r"layer 'fc' returned shape \(3, 4\).*\[B, K, H, W\]"):
        GradCAM(net, net.fc)(images)


def test_gradcam_hook_is_removed(net: TinyNet, images: torch.Tensor) -> None:
    """The hook is registered once; remove(), a with block or dropping the GradCAM take it off,
    and it does nothing between explanations."""
    cam = GradCAM(net, "features")
    assert len(net.features._forward_hooks) == 1
    torch.testing.assert_close(net(images), TinyNet.forward(net, images))
    cam.remove()
    assert not net.features._forward_hooks
    with pytest.raises(RuntimeError, match=r"remove\(\) was called"):
        cam(images)
    with GradCAM(net, "features") as cam:
        cam(images)
    assert not net.features._forward_hooks
    GradCAM(net, "features")(images)  # dropped at once
    assert not net.features._forward_hooks
