"""Identity degradation "Deg": the ArcFace angle between restored and ground-truth faces.

Each image is read as the reference reads it, ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``: OpenCV's
own gray decoding, which for a JPEG takes the luma plane straight from the decoder and differs from
decoding RGB and converting (by up to about 20 gray levels on single pixels of a JPEG, and by one
level on about half the pixels of a PNG, whose gray conversion libpng does). It is resized to 128x128
(bilinear) and scaled to (v - 127.5) / 127.5. The angle between the two ArcFace embeddings is
arccos(cosine similarity) in degrees. Pairs closer than 1 degree count as "identical": they are left
out of the mean and counted instead (`identity_count`). The mean is reported as `arcface_cos_dist`,
the reference's key name.
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import torch

from evaluation.arcface_arch import ResNetFace, resnet_face18
from evaluation.inputs import pair_batches, paired_files
from evaluation.weights import MetricUnavailable
from utils.images import read_rgb
from utils.registry import find_weights
from utils.weights import load_into, load_state_dict

IDENTICAL_BELOW_DEGREES = 1.0


def load_arcface(path: str | os.PathLike) -> ResNetFace:
    """ArcFace resnet_face18 from `resnet18_110.pth` (a DataParallel `module.` prefix is accepted)."""
    model = resnet_face18()
    load_into(model, load_state_dict(path), path)
    return model.eval().requires_grad_(False)


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H, W) gray image decoded as the reference does: ``cv2.imread(path, IMREAD_GRAYSCALE)``.

    Formats OpenCV cannot open (GIF, for one) are decoded to RGB and converted with ITU-R 601 weights.
    """
    try:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    except cv2.error:
        gray = None
    if gray is None:
        gray = cv2.cvtColor(read_rgb(path), cv2.COLOR_RGB2GRAY)  # ImageReadError if Pillow fails too
    return gray


def arcface_input(gray: np.ndarray) -> torch.Tensor:
    """uint8 gray (H, W) -> (1, 128, 128) float tensor in [-1, 1]."""
    if gray.ndim == 3:  # an RGB array: convert as OpenCV does
        gray = cv2.cvtColor(gray, cv2.COLOR_RGB2GRAY)
    gray = cv2.resize(gray, (128, 128), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy((gray.astype(np.float32) - 127.5) / 127.5)[None]


def angles_in_degrees(embeddings_a: torch.Tensor, embeddings_b: torch.Tensor) -> torch.Tensor:
    """Row-wise angle arccos(cos similarity) in degrees, (B, D) x (B, D) -> (B,)."""
    cosine = torch.nn.functional.cosine_similarity(embeddings_a.double(), embeddings_b.double(), dim=1)
    return torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))


def summarize_angles(
    angles: torch.Tensor | list[float], threshold: float = IDENTICAL_BELOW_DEGREES
) -> tuple[float, int]:
    """(mean angle over pairs at or above `threshold`, number of pairs below it).

    The mean is NaN when every pair is "identical".
    """
    angles = torch.as_tensor(angles, dtype=torch.float64)
    kept = angles[angles >= threshold]
    mean = kept.mean().item() if kept.numel() else math.nan
    return mean, int((angles < threshold).sum())


@torch.inference_mode()
def calculate_identity_distance(
    rec_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    ckpt_dir: str | os.PathLike | None = None,
    offline: bool = False,
    weights_path: str | os.PathLike | None = None,
) -> dict[str, float]:
    """{'arcface_cos_dist': mean angle in degrees, 'identity_count': pairs under 1 degree}."""
    pairs = paired_files(rec_dir, gt_dir, "--gt_path")
    model = load_arcface(weights_path or find_weights("arcface", [ckpt_dir], offline)).to(device)
    loading = dict(device=device, batch_size=batch_size, num_workers=num_workers, desc="identity (ArcFace)")
    angles = [
        angles_in_degrees(model(rec), model(gt)).cpu()
        for rec, gt in pair_batches(pairs, transform=arcface_input, reader=read_gray, **loading)
    ]
    if not angles:
        raise MetricUnavailable("no readable image pairs")
    mean, identical = summarize_angles(torch.cat(angles))
    return {"arcface_cos_dist": mean, "identity_count": identical}
