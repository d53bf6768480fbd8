"""The blind face degradation of DifFace / GFPGAN, used to train PMRF for blind face restoration.

The pipeline runs on float32 BGR HWC arrays in [0, 1], as BasicSR does: random horizontal flip of the
ground truth, blur with a random 41x41 Gaussian kernel (isotropic or anisotropic), bilinear downscale by
s ~ U[0.8, 32], colour Gaussian noise with sigma ~ U[0, 20] on the 0-255 scale, JPEG with quality
~ U[30, 100], bilinear resize back, and with probability 0.01 gray LQ and GT.

Sampling is split from applying (`sample_params`, then `apply`) so every random choice can be inspected
and replayed; the kernels themselves come from BasicSR's `bivariate_Gaussian`.
"""

from __future__ import annotations  # noqa: I001  (compat must be imported before basicsr)

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import Tensor

import compat.basicsr_torchvision  # noqa: F401  (must precede any basicsr import)
from basicsr.data.degradations import bivariate_Gaussian

from .base import Degradation


@dataclass
class DifFaceParams:
    """Every random choice of one difface draw; `apply(x, params)` is deterministic given these."""

    flip: bool
    kernel_kind: str  # "iso" or "aniso"
    sigma_x: float
    sigma_y: float  # equals sigma_x for "iso"
    rotation: float  # 0 for "iso"
    scale: float
    noise_sigma: float  # on the 0-255 scale
    noise_seed: int
    jpeg_quality: int
    gray: bool
    kernel: np.ndarray = field(repr=False)


class DifFaceDegradation(Degradation):
    """Returns (LQ on 8-bit levels, possibly flipped / grayed GT); `last_params` holds the latest draw."""

    def __init__(
        self,
        generator: torch.Generator | None = None,
        *,
        kernel_size: int = 41,
        kernel_kinds: tuple[str, ...] = ("iso", "aniso"),
        kernel_probs: tuple[float, ...] = (0.5, 0.5),
        blur_sigma: tuple[float, float] = (0.1, 15.0),
        rotation_range: tuple[float, float] = (-math.pi, math.pi),
        downsample_range: tuple[float, float] = (0.8, 32.0),
        noise_range: tuple[float, float] = (0.0, 20.0),
        jpeg_range: tuple[float, float] = (30.0, 100.0),
        gray_prob: float = 0.01,
        flip_prob: float = 0.5,
    ) -> None:
        super().__init__(generator)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if set(kernel_kinds) - {"iso", "aniso"} or len(kernel_kinds) != len(kernel_probs):
            raise ValueError(f"kernel kinds must be 'iso'/'aniso', one probability each; got {kernel_kinds}")
        self.kernel_size = kernel_size
        self.kernel_kinds = tuple(kernel_kinds)
        self.kernel_probs = np.asarray(kernel_probs, dtype=np.float64) / np.sum(kernel_probs)
        self.blur_sigma = blur_sigma
        self.rotation_range = rotation_range
        self.downsample_range = downsample_range
        self.noise_range = noise_range
        self.jpeg_range = jpeg_range
        self.gray_prob = gray_prob
        self.flip_prob = flip_prob
        self.last_params: DifFaceParams | None = None

    def sample_params(self, rng: np.random.Generator | None = None) -> DifFaceParams:
        rng = self.numpy_rng() if rng is None else rng
        flip = bool(rng.uniform() < self.flip_prob)
        kind = self.kernel_kinds[rng.choice(len(self.kernel_kinds), p=self.kernel_probs)]
        sigma_x = float(rng.uniform(*self.blur_sigma))
        if kind == "aniso":
            sigma_y = float(rng.uniform(*self.blur_sigma))
            rotation = float(rng.uniform(*self.rotation_range))
        else:
            sigma_y, rotation = sigma_x, 0.0
        kernel = bivariate_Gaussian(self.kernel_size, sigma_x, sigma_y, rotation, isotropic=kind == "iso")
        return DifFaceParams(
            flip=flip,
            kernel_kind=kind,
            sigma_x=sigma_x,
            sigma_y=sigma_y,
            rotation=rotation,
            scale=float(rng.uniform(*self.downsample_range)),
            noise_sigma=float(rng.uniform(*self.noise_range)),
            noise_seed=int(rng.integers(0, 2**62)),
            # OpenCV wants an integer quality; truncation, as BasicSR's float quality used to get.
            jpeg_quality=int(rng.uniform(*self.jpeg_range)),
            gray=bool(rng.uniform() < self.gray_prob),
            kernel=kernel,
        )

    def degrade(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.last_params = self.sample_params()
        return self.apply(x, self.last_params)

    def apply(self, x: Tensor, params: DifFaceParams) -> tuple[Tensor, Tensor]:
        gt = x.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy()[:, :, ::-1]  # RGB -> BGR
        if params.flip:
            gt = gt[:, ::-1]
        gt = np.ascontiguousarray(gt)
        height, width = gt.shape[:2]

        lq = cv2.filter2D(gt, -1, params.kernel)
        small = (max(1, int(width // params.scale)), max(1, int(height // params.scale)))
        lq = cv2.resize(lq, small, interpolation=cv2.INTER_LINEAR)
        lq = add_color_noise(lq, params.noise_sigma, np.random.default_rng(params.noise_seed))
        lq = jpeg_compress(lq, params.jpeg_quality)
        lq = cv2.resize(lq, (width, height), interpolation=cv2.INTER_LINEAR)
        if params.gray:
            lq, gt = bgr_to_gray3(lq), bgr_to_gray3(gt)

        lq_tensor = bgr_to_tensor(lq).mul(255.0).round().clamp(0, 255).div(255.0)
        gt_tensor = bgr_to_tensor(gt).clamp(0, 1)
        return lq_tensor.to(x.device), gt_tensor.to(x.device)


def add_color_noise(image: np.ndarray, sigma_255: float, rng: np.random.Generator) -> np.ndarray:
    """Independent Gaussian noise per pixel and channel, sigma on the 0-255 scale, clipped to [0, 1]."""
    noise = rng.standard_normal(image.shape).astype(np.float32) * np.float32(sigma_255 / 255.0)
    return np.clip(image + noise, 0.0, 1.0)


def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode a float BGR image in [0, 1] as JPEG (8-bit, rounded as OpenCV's fallback does)."""
    as_uint8 = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", as_uint8, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV failed to JPEG-encode an image of shape {image.shape}")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR).astype(np.float32) / 255.0


def bgr_to_gray3(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return np.repeat(gray[:, :, None], 3, axis=2)


def bgr_to_tensor(image: np.ndarray) -> Tensor:
    """HWC BGR array -> CHW RGB float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1], dtype=np.float32)).permute(2, 0, 1)
