"""Soft masks for restored faces and the blend of the faces into the (upscaled) background."""

from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
import torch

from whole_image.align import FACE_SIZE, inverse_matrix, warp_from_template
from whole_image.weights import (
    PARSER_FILE,
    PARSER_URL,
    MissingWeightsError,
    face_weights_dir,
    find_or_download,
    load_into,
)

# ParseNet labels pasted from the restored face: the set facexlib's FaceRestoreHelper pastes (its
# MASK_COLORMAP); the labels left out are the background and the regions around the face.
PARSING_FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)


def ellipse_mask(face_size: int = FACE_SIZE) -> np.ndarray:
    """Feathered ellipse over the face of an FFHQ-aligned crop: 1 inside, falling smoothly to 0 at its rim."""
    unit = face_size / 512.0
    mask = np.zeros((face_size, face_size), np.float32)
    center = (round(256 * unit), round(280 * unit))
    axes = (round(190 * unit), round(225 * unit))  # covers brows to chin and cheek to cheek of the template
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1.0, thickness=-1)
    return feather(mask, edge=0.04)


def feather(mask: np.ndarray, edge: float) -> np.ndarray:
    """Erode then blur a hard mask over `edge` (a fraction of its size), so it fades to about 0 at its
    original edge, and zero it near the crop's border."""
    face_size = mask.shape[0]
    width = max(1, round(face_size * edge))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    mask = cv2.erode(mask, disk)
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=width / 2.5)
    border = max(1, round(face_size * 0.02))
    mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = 0, 0, 0, 0
    return np.clip(mask, 0.0, 1.0)


class FaceParser:
    """facexlib's ParseNet turned into soft face masks for aligned 512x512 faces."""

    def __init__(self, network: torch.nn.Module, device: str | torch.device = "cpu"):
        self.network = network.to(device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def masks(self, faces: np.ndarray) -> np.ndarray:
        """(N, 512, 512, 3) uint8 RGB faces -> (N, 512, 512) float32 masks in [0, 1]."""
        batch = torch.from_numpy(np.ascontiguousarray(faces)).to(self.device).permute(0, 3, 1, 2).float()
        batch = batch.div(127.5).sub(1.0)  # ParseNet takes [-1, 1]
        if batch.shape[-1] != 512:
            batch = torch.nn.functional.interpolate(
                batch, size=(512, 512), mode="bilinear", align_corners=False
            )
        labels = self.network(batch)[0].argmax(dim=1).cpu().numpy()
        keep = np.isin(labels, PARSING_FACE_CLASSES).astype(np.float32)
        size = faces.shape[1]
        out = []
        for hard in keep:
            hard = cv2.resize(hard, (size, size), interpolation=cv2.INTER_LINEAR) if size != 512 else hard
            out.append(feather(hard, edge=0.02))
        return np.stack(out)


def build_parsenet() -> torch.nn.Module:
    from facexlib.parsing.parsenet import ParseNet

    return ParseNet(in_size=512, out_size=512, parsing_ch=19).eval()


def load_face_parser(
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    allow_download: bool = True,
) -> FaceParser | None:
    """ParseNet with `parsing_parsenet.pth`, or None (with one warning) when the file cannot be had:
    the faces are then pasted with the feathered ellipse."""
    folder = face_weights_dir(weights_dir)
    try:
        path = find_or_download(
            folder, PARSER_FILE, PARSER_URL, "face parsing", allow_download=allow_download
        )
    except MissingWeightsError as error:
        warnings.warn(f"{error}; pasting faces with a feathered ellipse mask instead", stacklevel=2)
        return None
    return FaceParser(load_into(build_parsenet(), path), device)


def face_masks(faces: np.ndarray, parser: FaceParser | None = None) -> np.ndarray:
    """Soft masks for (N, S, S, 3) aligned faces: parsed when a parser is given, else the ellipse."""
    if parser is not None:
        return parser.masks(faces)
    return np.repeat(ellipse_mask(faces.shape[1])[None], len(faces), axis=0)


def paste_faces(
    background: np.ndarray,
    faces: np.ndarray,
    masks: np.ndarray,
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
        inverse = inverse_matrix(matrix, scale)
        face_back = warp_from_template(face.astype(np.float32), inverse, height, width)
        mask_back = warp_from_template(mask.astype(np.float32), inverse, height, width)[:, :, None]
        canvas += mask_back * (face_back - canvas)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)
