"""Image transforms of the training, validation and test programs.

A transform receives the image as an RGB `PIL.Image.Image` (8-bit, as `utils.images.read_rgb` loads it)
and returns a float tensor (3, H, W) in [0, 1]. PIL input keeps the reference's resizing exactly: PIL's
bilinear resize, which always antialiases.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image
from torch import Tensor
from torchvision import transforms

Transform = Callable[[Image.Image], Tensor]


def make_transform(img_size: int | None) -> Transform:
    """Resize the shorter side to `img_size` (bilinear, antialiased), then to a tensor.

    `img_size=None` only converts to a tensor (inference keeps the input size).
    """
    if img_size is None:
        return transforms.ToTensor()
    if img_size <= 0:
        raise ValueError(f"img_size must be a positive number of pixels, got {img_size}")
    return transforms.Compose([transforms.Resize(img_size, antialias=True), transforms.ToTensor()])
