"""The four degradations of the controlled experiments: known operator plus white Gaussian noise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Degradation


class GaussianNoise(Degradation):
    """y = clip(x + sigma * n)."""

    def __init__(self, noise_std: float, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        self.noise_std = noise_std

    def degrade(self, x: Tensor) -> tuple[Tensor, None]:
        return (x + self.noise_std * self.randn_like(x)).clip(0, 1), None


class BicubicSuperResolutionNoise(Degradation):
    """Antialiased bicubic downscale by `scale`, clip, add noise, nearest-exact upscale, clip.

    y keeps the size of x. Sizes that are not multiples of `scale` are accepted: the low-resolution image
    has floor(H / scale) rows and is upscaled back to exactly (H, W).
    """

    def __init__(self, scale: int, noise_std: float, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        self.scale = scale
        self.noise_std = noise_std

    def degrade(self, x: Tensor) -> tuple[Tensor, None]:
        height, width = x.shape[-2:]
        if height < self.scale or width < self.scale:
            raise ValueError(f"{self.name}: image {height}x{width} is smaller than the scale {self.scale}")
        low = F.interpolate(
            x[None], scale_factor=1.0 / self.scale, mode="bicubic", antialias=True, align_corners=False
        ).clip(0, 1)
        low = low + self.noise_std * self.randn_like(low)
        y = F.interpolate(low, size=(height, width), mode="nearest-exact")
        return y[0].clip(0, 1), None


class ColorizationNoise(Degradation):
    """y = clip(mean over RGB + sigma * n), one channel."""

    y_channels = 1

    def __init__(self, noise_std: float, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        self.noise_std = noise_std

    def degrade(self, x: Tensor) -> tuple[Tensor, None]:
        gray = x.mean(dim=0, keepdim=True)
        return (gray + self.noise_std * self.randn_like(gray)).clip(0, 1), None


class RandomInpaintingNoise(Degradation):
    """Zero exactly int(drop_fraction * H * W) pixel positions (all channels), add noise everywhere, clip.

    `int`, not `round`, as the reference: 57 of the 64 pixels of an 8×8 image (57.6), not 58.

    The mask of the latest call is kept in `last_mask` ((1, H, W) float, 1 = kept) for inspection.
    """

    def __init__(
        self, drop_fraction: float, noise_std: float, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(generator)
        if not 0.0 <= drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction must lie in [0, 1], got {drop_fraction}")
        self.drop_fraction = drop_fraction
        self.noise_std = noise_std
        self.last_mask: Tensor | None = None

    def sample_mask(self, height: int, width: int) -> Tensor:
        num_pixels = height * width
        dropped = self.randperm(num_pixels)[: int(num_pixels * self.drop_fraction)]
        mask = torch.ones(num_pixels)
        mask[dropped] = 0.0
        return mask.view(1, height, width)

    def degrade(self, x: Tensor) -> tuple[Tensor, None]:
        mask = self.sample_mask(*x.shape[-2:]).to(device=x.device, dtype=x.dtype)
        self.last_mask = mask
        return (x * mask + self.noise_std * self.randn_like(x)).clip(0, 1), None
