"""Background upsampling: plain resizing, or Real-ESRGAN x2 (BasicSR's RRDBNet) run tile by tile; and the
one rule on how large a restored photo may be (inference.py --whole_image and app.py share it)."""

from __future__ import annotations

import os
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from whole_image.weights import find_tool_weights, load_weights_into


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of a photo resized by `scale`, at least one pixel each."""
    return max(1, round(height * scale)), max(1, round(width * scale))


# Enlargement stops when the output's longer side reaches this (a photo already larger keeps its size).
MAX_OUTPUT_SIDE = 4096
# Peak working memory of one photo per output pixel: restore_photo's float paste buffers and the side-by-side
# comparison (measured: 56-58 bytes with one face, at 12, 13 and 48 megapixels out).
BYTES_PER_OUTPUT_PIXEL = 60


class OutputTooLarge(ValueError):
    """Restoring a photo at the scale asked would need more memory than the machine has free."""


def available_memory() -> int | None:
    """Bytes of memory free for new allocations (Linux's MemAvailable), or None where it is unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def output_scale(
    height: int, width: int, upscale: float, max_side: int = MAX_OUTPUT_SIDE, free: int | None = -1
) -> tuple[float, str | None]:
    """(scale, note): `upscale` lowered, where needed, so that the output's longer side stays within
    `max_side` pixels (or the photo's own, when that is larger: a big photo is never shrunk for this);
    the note says so, with the size and memory asked for. OutputTooLarge (one line) when even that scale
    needs more than the `free` memory (default: what the machine has free now; None: no check)."""
    longest = max(height, width)
    scale = min(upscale, max(max_side / longest, 1.0))
    note = None
    if scale < upscale:
        asked_h, asked_w = output_size(height, width, upscale)
        got_h, got_w = output_size(height, width, scale)
        note = (
            f"scale {upscale:g} would give {asked_w}×{asked_h} pixels (about "
            f"{asked_h * asked_w * BYTES_PER_OUTPUT_PIXEL / 1e9:.1f} GB to build); restored at {scale:.2f} "
            f"({got_w}×{got_h}) to stay within {max_side} px"
        )
    free = available_memory() if free == -1 else free
    out_h, out_w = output_size(height, width, scale)
    needed = out_h * out_w * BYTES_PER_OUTPUT_PIXEL
    if free is not None and needed > free:
        raise OutputTooLarge(
            f"{out_w}×{out_h} pixels out needs about {needed / 1e9:.1f} GB of memory, {free / 1e9:.1f} GB is "
            "free; use a smaller scale"
        )
    return scale, note


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Lanczos when enlarging, area averaging when shrinking."""
    if image.shape[:2] == (height, width):
        return image.copy()
    shrinking = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    )


class BackgroundUpsampler(Protocol):
    def __call__(self, image: np.ndarray, scale: float) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> the same photo resized by `scale`."""


def resize_background(image: np.ndarray, scale: float) -> np.ndarray:
    """The `none` background upsampler."""
    return resize(image, *output_size(image.shape[0], image.shape[1], scale))


class RealESRGANUpsampler:
    """Real-ESRGAN x2plus; other scales resize its x2 output. Big photos are processed in tiles of
    `tile` pixels (0 = whole photo) overlapping by `tile_pad`, so memory stays bounded."""

    def __init__(
        self,
        network: torch.nn.Module,
        device: str | torch.device = "cpu",
        tile: int = 400,
        tile_pad: int = 10,
    ):
        self.network = network.to(device).eval()
        self.device = torch.device(device)
        self.tile = tile
        self.tile_pad = tile_pad

    def __call__(self, image: np.ndarray, scale: float) -> np.ndarray:
        upscaled = self.upscale_x2(image)
        return resize(upscaled, *output_size(image.shape[0], image.shape[1], scale))

    @torch.no_grad()
    def upscale_x2(self, image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255.0)
        height, width = x.shape[-2:]
        tile = self.tile if self.tile > 0 else max(height, width)
        out = torch.empty(1, 3, 2 * height, 2 * width)
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                # Context around the tile, cropped away after the network so tile seams do not show.
                top_pad, left_pad = max(top - self.tile_pad, 0), max(left - self.tile_pad, 0)
                bottom_pad, right_pad = min(bottom + self.tile_pad, height), min(right + self.tile_pad, width)
                result = self.run(x[:, :, top_pad:bottom_pad, left_pad:right_pad])
                out[:, :, 2 * top : 2 * bottom, 2 * left : 2 * right] = result[
                    :,
                    :,
                    2 * (top - top_pad) : 2 * (bottom - top_pad),
                    2 * (left - left_pad) : 2 * (right - left_pad),
                ]
        return out[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The network on one tile; odd sizes are reflect-padded (RRDBNet x2 folds 2x2 pixels)."""
        height, width = x.shape[-2:]
        pad_bottom, pad_right = height % 2, width % 2
        if pad_bottom or pad_right:
            x = F.pad(x, (0, pad_right, 0, pad_bottom), mode="replicate")
        y = self.network(x.to(self.device)).float().cpu()
        return y[:, :, : 2 * height, : 2 * width]


def build_rrdbnet_x2() -> torch.nn.Module:
    import compat.basicsr_torchvision  # noqa: F401  (must precede any basicsr import)

    # isort: split
    from basicsr.archs.rrdbnet_arch import RRDBNet

    return RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=2)


def load_realesrgan(
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    tile: int = 400,
) -> RealESRGANUpsampler:
    """Real-ESRGAN with `RealESRGAN_x2plus.pth` from `weights_dir` (default checkpoints/realesrgan/; the
    registry's "realesrgan_x2plus"); MissingWeightsError naming the file and its download address when it
    is absent."""
    path = find_tool_weights("realesrgan_x2plus", weights_dir)  # before building: a missing file is said first
    return RealESRGANUpsampler(load_weights_into(build_rrdbnet_x2(), path), device, tile=tile)
