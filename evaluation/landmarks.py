"""Landmark distance "LMD": how far the 98 WFLW landmarks of a restored face move from the ground truth.

Landmarks come from facexlib's AWing FAN (4 hourglass modules, 98 points, `alignment_WFLW_4HG.pth`,
weights under the key `state_dict`). Each image is resized to 256x256 (bilinear), scaled to [0, 1]
and fed as RGB. On each 64x64 heat map the arg-max is moved a quarter pixel toward the larger of its
two neighbours along each axis, shifted by +0.5 to the pixel centre and scaled by W/64 and H/64 of
the original image. LMD is the mean Euclidean distance over the 98 points, averaged over images.

How the neighbours are found at the border of the heat map (`refinement`):

- "reference" (default, the authors' `calculate_points`): neighbours are read from the flattened map,
  so left/right of a point in the first/last column are the last/first pixel of the neighbouring row
  (before the first pixel comes the map's last one). Above/below are the pixels one row up/down,
  except that when ANY landmark of the image has its arg-max in the last row (index + 64 >= 4096),
  "below" is the map's bottom-right pixel for EVERY landmark, and when any has index - 64 <= 0 (the
  first row or the first pixel of the second), "above" is the map's top-left pixel for every
  landmark. One landmark on the border thus moves all 98 by up to half a heat-map pixel (4 image
  pixels at 512x512). Where the authors' code would fail (arg-max on the very last pixel, whose right
  neighbour does not exist) the point itself is used.
- "per_landmark": each landmark uses only its own neighbours; along an axis where one of them lies
  outside the map the point does not move.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from evaluation.inputs import mean_over_pairs, paired_files
from utils.registry import find_weights
from utils.weights import load_into, load_state_dict

FAN_INPUT_SIZE = 256
NUM_LANDMARKS = 98
REFINEMENTS = ("reference", "per_landmark")


def build_fan() -> torch.nn.Module:
    """facexlib's AWing FAN with the WFLW configuration (random weights)."""
    from facexlib.alignment.awing_arch import FAN

    return FAN(num_modules=4, num_landmarks=NUM_LANDMARKS, device="cpu")


def load_fan(path: str | os.PathLike) -> torch.nn.Module:
    model = build_fan()
    load_into(model, load_state_dict(path, keys=("state_dict",)), path)
    return model.eval().requires_grad_(False)


def fan_input(rgb: np.ndarray) -> dict[str, torch.Tensor]:
    """uint8 RGB -> {'image': (3, 256, 256) in [0, 1], 'size': (W, H) of the original}."""
    height, width = rgb.shape[:2]
    resized = cv2.resize(rgb, (FAN_INPUT_SIZE, FAN_INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    image = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float() / 255.0
    return {"image": image, "size": torch.tensor([width, height], dtype=torch.float64)}


def heatmaps_to_points(heatmaps: torch.Tensor, refinement: str = "reference") -> torch.Tensor:
    """(B, N, H, W) heat maps of B images -> (B, N, 2) sub-pixel (x, y) in heat-map pixels.

    The arg-max moves 0.25 toward the larger neighbour along x and along y (not at all when the
    neighbours are equal), then +0.5 to the pixel centre; `refinement` says how neighbours are found
    at the border (see the module's description).
    """
    if refinement == "reference":
        return _reference_points(heatmaps)
    if refinement != "per_landmark":
        raise ValueError(f"refinement must be one of {REFINEMENTS}, got {refinement!r}")
    height, width = heatmaps.shape[-2:]
    flat = heatmaps.flatten(2)
    index = flat.argmax(dim=2)
    x, y = index % width, index // width

    def value_at(dx: int, dy: int) -> torch.Tensor:
        neighbour = (y + dy).clamp(0, height - 1) * width + (x + dx).clamp(0, width - 1)
        return flat.gather(2, neighbour.unsqueeze(2)).squeeze(2)

    inside_x = (x > 0) & (x < width - 1)
    inside_y = (y > 0) & (y < height - 1)
    shift_x = torch.sign(value_at(1, 0) - value_at(-1, 0)) * inside_x
    shift_y = torch.sign(value_at(0, 1) - value_at(0, -1)) * inside_y
    return torch.stack((x + 0.25 * shift_x + 0.5, y + 0.25 * shift_y + 0.5), dim=-1).double()


def _reference_points(heatmaps: torch.Tensor) -> torch.Tensor:
    """The authors' refinement, border behaviour included, applied to each image on its own."""
    height, width = heatmaps.shape[-2:]
    count = height * width
    flat = heatmaps.flatten(2)
    index = flat.argmax(dim=2)
    x, y = index % width, index // width

    def value_at(position: torch.Tensor) -> torch.Tensor:
        return flat.gather(2, position.unsqueeze(2)).squeeze(2)

    right = value_at((index + 1).clamp(max=count - 1))  # the authors' code fails on the last pixel
    left = value_at((index - 1) % count)  # index -1 is the map's last pixel
    below = value_at((index + width).clamp(max=count - 1))
    above = value_at((index - width).clamp(min=0))
    bottom_right = flat[:, :, count - 1]
    top_left = flat[:, :, 0]
    below = torch.where((index + width >= count).any(dim=1, keepdim=True), bottom_right, below)
    above = torch.where((index - width <= 0).any(dim=1, keepdim=True), top_left, above)
    shift_x = torch.sign(right - left)
    shift_y = torch.sign(below - above)
    return torch.stack((x + 0.25 * shift_x + 0.5, y + 0.25 * shift_y + 0.5), dim=-1).double()


def predict_landmarks(
    model: torch.nn.Module, images: torch.Tensor, sizes: torch.Tensor, refinement: str = "reference"
) -> torch.Tensor:
    """(B, 3, 256, 256) FAN inputs and (B, 2) original (W, H) -> (B, 98, 2) points in image pixels."""
    outputs, _ = model(images)
    heatmaps = outputs[-1][:, :-1]  # the last channel is the boundary map
    scale = sizes.to(heatmaps.device, torch.float64) / torch.tensor(
        heatmaps.shape[-1:-3:-1], device=heatmaps.device
    )
    return heatmaps_to_points(heatmaps, refinement) * scale[:, None, :]


def landmark_distance(points_a: torch.Tensor, points_b: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance over the points of each image, (B, N, 2) x (B, N, 2) -> (B,)."""
    return (points_a - points_b).norm(dim=-1).mean(dim=-1)


@torch.inference_mode()
def calculate_landmark_distance(
    rec_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    ckpt_dir: str | os.PathLike | None = None,
    offline: bool = False,
    weights_path: str | os.PathLike | None = None,
    refinement: str = "reference",
) -> float:
    """Mean landmark distance (pixels of the original images) between same-named images."""
    if refinement not in REFINEMENTS:
        raise ValueError(f"refinement must be one of {REFINEMENTS}, got {refinement!r}")
    pairs = paired_files(rec_dir, gt_dir, "--gt_path")
    model = load_fan(weights_path or find_weights("awing_fan", [ckpt_dir], offline)).to(device)

    def per_batch(rec: dict[str, torch.Tensor], gt: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        points = [predict_landmarks(model, each["image"], each["size"], refinement) for each in (rec, gt)]
        return {"lmd": landmark_distance(*points)}

    loading = dict(device=device, batch_size=batch_size, num_workers=num_workers, desc="landmarks (FAN)")
    return mean_over_pairs(pairs, per_batch, transform=fan_input, **loading)["lmd"]
