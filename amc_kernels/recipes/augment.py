"""Batched image augmentation on the training device, with its random parameters seeded.

Every view takes uint8 images [B, 3, H, W], converts them to [0, 1] at ``size``×``size``
(bilinear, antialiased, when the stored size differs), augments, then normalises with the data
set's mean and std. Random parameters come from a CPU generator, so a run is the same on every
device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Augmenter:
    """The views of the recipes: plain, standard (translate or crop), contrastive, CGC's crop."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        size: int,
        *,
        kind: str = "translate",
        flip: bool = True,
        pad: int = 2,
        seed: int = 0,
    ) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.size, self.kind, self.flip, self.pad = size, kind, flip, pad
        self.generator = torch.Generator().manual_seed(seed)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] → float [B, 3, size, size] in [0, 1]."""
        x = images.float() / 255
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def plain(self, images: torch.Tensor) -> torch.Tensor:
        """No augmentation (ExCon's view0, CGC's original view, evaluation)."""
        return self.normalize(self.to_unit(images))

    def standard(self, images: torch.Tensor) -> torch.Tensor:
        """The training view of CE: ±pad px translation (reflect padding, AMC's) or a random
        resized crop (scale 0.08–1), then a horizontal flip when ``flip``."""
        x = self.to_unit(images)
        if self.kind == "crop":
            return self.normalize(self.resized_crop(x, (0.08, 1.0))[0])
        x = self.translate(x)
        if self.flip:
            x = torch.where(self._coin(len(x), 0.5, x.device)[:, None, None, None], x.flip(-1), x)
        return self.normalize(x)

    def contrastive(self, images: torch.Tensor) -> torch.Tensor:
        """SupCon's view: random resized crop (scale 0.2–1), flip, colour jitter
        (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale with p = 0.2."""
        x, _, _ = self.resized_crop(self.to_unit(images), (0.2, 1.0))
        return self.normalize(self.grayscale(self.jitter(x)))

    def cgc_view(
        self, images: torch.Tensor, scale: tuple[float, float], flip_bug: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CGC's augmented view and the crops [B, 4] (i, j, h, w) and flip flags [B] it used."""
        x, crops, flips = self.resized_crop(self.to_unit(images), scale, flip_bug=flip_bug)
        return self.normalize(x), crops, flips

    def _coin(self, count: int, p: float, device: torch.device) -> torch.Tensor:
        return (self._rand(count) < p).to(device)

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        """Random shifts by up to ±pad pixels with reflect padding (per image)."""
        if self.pad == 0:
            return x
        batch, _, height, width = x.shape
        padded = F.pad(x, (self.pad,) * 4, mode="reflect")
        offset = (self._rand(batch, 2) * (2 * self.pad + 1)).long().to(x.device)
        rows = (offset[:, 0:1] + torch.arange(height, device=x.device))[:, :, None]
        cols = (offset[:, 1:2] + torch.arange(width, device=x.device))[:, None, :]
        index = torch.arange(batch, device=x.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)

    def crop_params(self, batch: int, scale: tuple[float, float]) -> torch.Tensor:
        """torchvision's RandomResizedCrop.get_params for a square frame, batched: 10 tries of
        area ∈ scale·S² and log-uniform ratio ∈ [3/4, 4/3], else the whole frame. [B, 4] int64."""
        s, tries = self.size, 10
        area = s * s * (scale[0] + (scale[1] - scale[0]) * self._rand(batch, tries))
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * self._rand(batch, tries)
        ratio = torch.exp(log_ratio)
        w = torch.sqrt(area * ratio).round().long()
        h = torch.sqrt(area / ratio).round().long()
        valid = (w > 0) & (w <= s) & (h > 0) & (h <= s)
        first = valid.int().argmax(dim=1, keepdim=True)
        found = valid.any(dim=1)
        h = torch.where(found, h.gather(1, first)[:, 0], s)
        w = torch.where(found, w.gather(1, first)[:, 0], s)
        corner = self._rand(batch, 2)
        i = (corner[:, 0] * (s - h + 1)).long()
        j = (corner[:, 1] * (s - w + 1)).long()
        return torch.stack([i, j, h, w], dim=1)

    def resized_crop(
        self, x: torch.Tensor, scale: tuple[float, float], *, flip_bug: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crop rows i..i+h, cols j..j+w, resize bilinearly to size×size (align_corners=False,
        as resized_crop), flip horizontally when ``flip``. Returns (views, crops, flip flags).

        ``flip_bug`` reproduces CGC's official flag: set with p = 0.5, but the image is flipped
        only when a second coin also lands (p = 0.25), so some flags are wrong."""
        batch, device = len(x), x.device
        crops = self.crop_params(batch, scale)
        flips = self._rand(batch) < (0.5 if self.flip else 0.0)
        flipped = flips & (self._rand(batch) < 0.5) if flip_bug else flips
        s = self.size
        i, j, h, w = crops.double().unbind(1)
        sign = 1.0 - 2.0 * flipped.double()
        theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 2] = sign * w / s, (2 * j + w) / s - 1
        theta[:, 1, 1], theta[:, 1, 2] = h / s, (2 * i + h) / s - 1
        grid = F.affine_grid(theta.float().to(device), [batch, 3, s, s], align_corners=False)
        views = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return views, crops.to(device), flips.to(device)

    def jitter(self, x: torch.Tensor, p: float = 0.8) -> torch.Tensor:
        """Brightness, contrast, saturation (factors in [0.6, 1.4]) and hue (±0.1 turn, as a
        rotation of the YIQ chroma plane), in that order, each image with probability p."""
        batch, device = len(x), x.device

        def factor(spread: float) -> torch.Tensor:
            return (1 - spread + 2 * spread * self._rand(batch)).view(-1, 1, 1, 1).to(device)

        b, c, s = factor(0.4), factor(0.4), factor(0.4)
        hue = (2 * math.pi * 0.1 * (2 * self._rand(batch) - 1)).to(device)
        apply = self._coin(batch, p, device)[:, None, None, None]
        y = (x * b).clamp(0, 1)
        gray = self._luma(y)
        y = (y - gray.mean(dim=(2, 3), keepdim=True)) * c + gray.mean(dim=(2, 3), keepdim=True)
        y = y.clamp(0, 1)
        gray = self._luma(y)
        y = (gray + (y - gray) * s).clamp(0, 1)
        y = self._rotate_hue(y, hue).clamp(0, 1)
        return torch.where(apply, y, x)

    def grayscale(self, x: torch.Tensor, p: float = 0.2) -> torch.Tensor:
        apply = self._coin(len(x), p, x.device)[:, None, None, None]
        return torch.where(apply, self._luma(x).expand_as(x), x)

    @staticmethod
    def _luma(x: torch.Tensor) -> torch.Tensor:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)

    @staticmethod
    def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        to_yiq = torch.tensor(
            [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
            device=x.device,
        )
        yiq = torch.einsum("ck,bkhw->bchw", to_yiq, x)
        cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
        i, q = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
        return torch.einsum("ck,bkhw->bchw", torch.linalg.inv(to_yiq), yiq)
