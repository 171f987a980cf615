"""Models of the recipes: a body that ends in the explained feature map, GAP, a linear head.

:class:`Net` gives the three things the recipes need from one forward pass: the last feature map
A [B, K, h, w] (Grad-CAM's and CGC's layer), the GAP embedding e = mean_hw A [B, K] (AMC's
embedding, SupCon's encoder output) and the logits fc(e).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .config import TrainConfig


class GaussianNoise(nn.Module):
    """Adds N(0, σ²) noise in training mode only (the AMC network's input layer)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sigma > 0:
            return x + self.sigma * torch.randn_like(x)
        return x

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def _conv(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    """conv (no bias) → BN → leaky ReLU(0.1), as every layer of the AMC network."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1),
    )


def small_cnn(width: int = 32, embedding: int = 128, noise: float = 0.15) -> nn.Sequential:
    """The AMC paper's conv-large network, two convolutions per stage instead of three:
    noise σ → [conv3×3-w]×2 → max-pool → [conv3×3-2w]×2 → max-pool → conv3×3-4w →
    conv1×1-``embedding`` (the explained layer, "cam"). Padded convolutions keep an (S/4)²
    map; the official 3×3 VALID convolution gives 6×6 instead of 8×8 at 32 px."""
    w = width
    return nn.Sequential(
        OrderedDict(
            noise=GaussianNoise(noise),
            conv1=_conv(3, w),
            conv2=_conv(w, w),
            pool1=nn.MaxPool2d(2),
            conv3=_conv(w, 2 * w),
            conv4=_conv(2 * w, 2 * w),
            pool2=nn.MaxPool2d(2),
            conv5=_conv(2 * w, 4 * w),
            cam=_conv(4 * w, embedding, kernel=1),
        )
    )


def resnet(name: str, cifar_stem: bool) -> tuple[nn.Sequential, int]:
    """torchvision's ResNet-18/50 up to layer4 (no weights are downloaded), and its width.

    ``cifar_stem`` replaces the 7×7 stride-2 convolution and max-pool by a 3×3 stride-1
    convolution (SupContrast's CIFAR ResNet)."""
    from torchvision import models

    net = getattr(models, name)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    return nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names)), net.fc.in_features


class Net(nn.Module):
    """body → A → GAP → fc. ``cam_layer`` names the module whose output is A."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, cam_layer: str):
        super().__init__()
        self.body = body
        self.fc = nn.Linear(feature_dim, num_classes)
        self.feature_dim, self.cam_layer = feature_dim, cam_layer

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [B, K, h, w], e = mean_hw A [B, K])."""
        fmap = self.body(x)
        return fmap, fmap.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)[1])


def projection_head(dim: int, out: int = 128) -> nn.Sequential:
    """SupCon's MLP head dim → dim → ReLU → out (normalised inside supcon_loss)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out))


def build_model(config: TrainConfig, num_classes: int) -> Net:
    """The model of a resolved config."""
    if config.model == "small-cnn":
        return Net(small_cnn(config.width), 128, num_classes, "body.cam")
    body, dim = resnet(config.model.replace("-", ""), config.cifar_stem)
    return Net(body, dim, num_classes, "body.layer4")


def excon_layer(config: TrainConfig) -> str:
    """ExCon's explained layer: the last block's last convolution of layer2 for CIFAR-size
    inputs (≤ 32 px), of layer4 for larger ones (Tiny ImageNet); the small CNN's last map."""
    if config.model == "small-cnn":
        return "body.cam"
    block, conv = {"resnet18": ("1", "conv2"), "resnet50": ("3", "conv3")}[config.model]
    if config.image_size <= 32:
        return f"body.layer2.{block}.{conv}"
    last = {"resnet18": "1", "resnet50": "2"}[config.model]
    return f"body.layer4.{last}.{conv}"
