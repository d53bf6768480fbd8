"""Soft masks for restored faces and the blend of the faces into the (upscaled) background.

The masks are made in the aligned crop, so their feather is a fixed fraction of the face and scales
with it in the photo. It is a Gaussian of σ = FEATHER_SIGMA_512 pixels at 512 (16 px): wider than
facexlib's paste mask, which blurs the parsing map twice with σ = 11 (a σ of 11·√2 ≈ 15.6 px at 512).
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import cv2
import numpy as np
import torch

from utils.weights import MissingWeightsError
from whole_image.align import FACE_SIZE, inverse_matrix, warp_from_template
from whole_image.weights import find_tool_weights, load_weights_into

# ParseNet labels pasted from the restored face: the set facexlib's FaceRestoreHelper pastes (its
# MASK_COLORMAP); the labels left out are the background and the regions around the face.
PARSING_FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)
FACEXLIB_SIGMA_512 = 11.0 * math.sqrt(2.0)  # two Gaussian blurs of σ = 11 at 512
FEATHER_SIGMA_512 = 16.0


def feather_sigma(face_size: int) -> float:
    return FEATHER_SIGMA_512 * face_size / 512.0


def feather(hard: np.ndarray, erode_sigmas: float) -> np.ndarray:
    """A soft version of a hard (S, S) mask: eroded by `erode_sigmas` feather widths, kept three widths
    away from the crop's border (so it is ~0 there and the crop's edge never shows), then blurred with
    the feather Gaussian."""
    face_size = hard.shape[0]
    sigma = feather_sigma(face_size)
    mask = (hard > 0.5).astype(np.float32)
    radius = round(erode_sigmas * sigma)
    if radius > 0:
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.erode(mask, disk)
    margin = math.ceil(3 * sigma)
    mask[:margin], mask[-margin:], mask[:, :margin], mask[:, -margin:] = 0, 0, 0, 0
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    mask[0], mask[-1], mask[:, 0], mask[:, -1] = 0, 0, 0, 0
    return np.clip(mask, 0.0, 1.0)


def ellipse_region(face_size: int = FACE_SIZE) -> np.ndarray:
    """Hard ellipse over brows, cheeks and chin of an FFHQ-aligned crop."""
    unit = face_size / 512.0
    mask = np.zeros((face_size, face_size), np.float32)
    center = (round(256 * unit), round(280 * unit))
    axes = (round(200 * unit), round(232 * unit))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1.0, thickness=-1)
    return mask


@functools.lru_cache(maxsize=4)
def ellipse_mask(face_size: int = FACE_SIZE) -> np.ndarray:
    """The soft ellipse used when no face parser is at hand: 1 over the face, fading to ~0 at the ellipse
    (made once per size; read-only)."""
    mask = feather(ellipse_region(face_size), erode_sigmas=2.0)
    mask.flags.writeable = False
    return mask


class FaceParser:
    """facexlib's ParseNet turned into soft face masks for aligned faces."""

    def __init__(self, network: torch.nn.Module, device: str | torch.device = "cpu"):
        self.network = network.to(device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def masks(self, faces: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB faces -> (N, S, S) float32 masks in [0, 1]."""
        batch = torch.from_numpy(np.ascontiguousarray(faces)).to(self.device).permute(0, 3, 1, 2).float()
        batch = batch.div(127.5).sub(1.0)  # ParseNet takes [-1, 1]
        if batch.shape[-1] != 512:
            batch = torch.nn.functional.interpolate(batch, size=(512, 512), mode="bilinear", align_corners=False)
        labels = self.network(batch)[0].argmax(dim=1).cpu().numpy()
        keep = np.isin(labels, PARSING_FACE_CLASSES).astype(np.float32)
        size = faces.shape[1]
        out = []
        for hard in keep:
            hard = cv2.resize(hard, (size, size), interpolation=cv2.INTER_LINEAR) if size != 512 else hard
            out.append(feather(hard, erode_sigmas=1.0))
        return np.stack(out)


def build_parsenet() -> torch.nn.Module:
    from facexlib.parsing.parsenet import ParseNet

    return ParseNet(in_size=512, out_size=512, parsing_ch=19).eval()


def load_face_parser(
    weights_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> FaceParser | None:
    """ParseNet with `parsing_parsenet.pth`, or None with one warning when the file is not on disk:
    the faces are then pasted with the soft ellipse."""
    try:
        path = find_tool_weights("parsenet", weights_dir)
    except MissingWeightsError as error:
        warnings.warn(f"{error}; pasting faces with a soft ellipse mask instead", stacklevel=2)
        return None
    return FaceParser(load_weights_into(build_parsenet(), path), device)


def face_masks(faces: np.ndarray, parser: FaceParser | None = None) -> np.ndarray:
    """Soft masks for (N, S, S, 3) aligned faces: parsed when a parser is given, else the ellipse."""
    if parser is not None:
        return parser.masks(faces)
    return np.repeat(ellipse_mask(faces.shape[1])[None], len(faces), axis=0)


def shrink_for_warp(
    images: list[np.ndarray], inverse: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Crops that will land much smaller in the photo are first reduced with area averaging (a bare
    warp would alias them); returns them and the matching crop -> photo transform."""
    face_size = images[0].shape[0]
    landed = math.sqrt(abs(np.linalg.det(inverse[:, :2])))  # photo pixels per crop pixel
    if landed >= 0.5:
        return images, inverse
    size = max(8, math.ceil(face_size * landed * 1.5))
    k = size / face_size
    reduced = [cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) for image in images]
    # A reduced-crop pixel u' sits at crop position u = (u' - (k - 1) / 2) / k (cv2.resize's centres).
    adjusted = inverse.copy()
    adjusted[:, :2] = inverse[:, :2] / k
    adjusted[:, 2] = inverse[:, 2] - inverse[:, :2] @ np.full(2, (k - 1) / 2) / k
    return reduced, adjusted


def paste_faces(
    background: np.ndarray,
    faces: np.ndarray | list[np.ndarray],
    masks: np.ndarray | list[np.ndarray],
    matrices: list[np.ndarray],
    scale: float,
) -> np.ndarray:
    """Blend aligned faces into `background` (the photo already resized by `scale`).

    `matrices` are the photo -> crop alignments of the faces; each face is warped back with its inverse
    and mixed in through its mask, so overlapping faces are pasted one over the other in order.
    """
    height, width = background.shape[:2]
    canvas = background.astype(np.float32)
    for face, mask, matrix in zip(faces, masks, matrices, strict=True):
        (face, mask), inverse = shrink_for_warp(
            [face.astype(np.float32), mask.astype(np.float32)], inverse_matrix(matrix, scale)
        )
        face_back = warp_from_template(face, inverse, height, width)
        mask_back = warp_from_template(mask, inverse, height, width)[:, :, None]
        canvas += mask_back * (face_back - canvas)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)
