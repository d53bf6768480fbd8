"""Restoring every face of an ordinary photo: detect, align, restore in one batch, paste back."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from whole_image.align import FACE_SIZE, alignment_matrix, warp_to_template
from whole_image.detect import DetectedFace, FaceDetector, select_faces
from whole_image.paste import FaceParser, face_masks, paste_faces
from whole_image.upsample import BackgroundUpsampler, resize, resize_background

RestoreFaces = Callable[[torch.Tensor], torch.Tensor]


class NoFaceWarning(UserWarning):
    """A photo had no face to restore; it was only resized."""


@dataclass
class PhotoRestoration:
    restored_image: np.ndarray  # (H * scale, W * scale, 3) uint8 RGB
    faces: list[DetectedFace] = field(default_factory=list)  # the restored faces, in the order below
    cropped_faces: list[np.ndarray] = field(default_factory=list)  # aligned 512x512x3 uint8 inputs
    restored_faces: list[np.ndarray] = field(default_factory=list)  # what the model made of them


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3) uint8; alpha is dropped."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    if image.shape[2] <= 2:  # gray, possibly with alpha
        image = np.repeat(image[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def faces_to_tensor(faces: list[np.ndarray]) -> torch.Tensor:
    """uint8 (S, S, 3) crops -> float (N, 3, S, S) in [0, 1]."""
    return torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float().div(255.0)


def tensor_to_faces(batch: torch.Tensor) -> np.ndarray:
    """float (N, 3, S, S) in [0, 1] -> uint8 (N, S, S, 3)."""
    batch = batch.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    return batch.permute(0, 2, 3, 1).numpy()


def restore_aligned(faces: list[np.ndarray], restore_faces: RestoreFaces) -> np.ndarray:
    """All crops through the model in one batch; its output must keep the batch's shape."""
    batch = faces_to_tensor(faces)
    with torch.no_grad():
        restored = restore_faces(batch)
    if tuple(restored.shape) != tuple(batch.shape):
        raise ValueError(
            f"restore_faces returned shape {tuple(restored.shape)} for input {tuple(batch.shape)}"
        )
    return tensor_to_faces(restored)


def aligned_faces(
    detections: list[DetectedFace],
    height: int,
    width: int,
    only_center_face: bool,
    max_faces: int | None,
) -> tuple[list[DetectedFace], list[np.ndarray]]:
    """The faces to restore with their alignment matrices; faces whose landmarks cannot be aligned
    are dropped."""
    usable = []
    for face in detections:
        try:
            usable.append((face, alignment_matrix(face.landmarks, FACE_SIZE)))
        except ValueError:
            continue
    chosen = select_faces([face for face, _ in usable], height, width, only_center_face, max_faces)
    matrix_of = {id(face): matrix for face, matrix in usable}
    return chosen, [matrix_of[id(face)] for face in chosen]


def restore_photo(
    image: np.ndarray,
    restore_faces: RestoreFaces,
    detector: FaceDetector,
    upscale: float = 2.0,
    only_center_face: bool = False,
    max_faces: int | None = None,
    parser: FaceParser | None = None,
    bg_upsampler: BackgroundUpsampler | None = None,
    name: str = "photo",
) -> PhotoRestoration:
    """Restore every selected face of `image` and paste it into the background resized by `upscale`.

    A photo without faces comes back resized only, with a NoFaceWarning naming it.
    """
    if not upscale > 0:
        raise ValueError(f"upscale must be positive, got {upscale}")
    image = as_rgb(image)
    height, width = image.shape[:2]
    faces, matrices = aligned_faces(detector.detect(image), height, width, only_center_face, max_faces)
    background = (bg_upsampler or resize_background)(image, upscale)
    if not faces:
        warnings.warn(
            f"{name}: no face detected; copied through, resized x{upscale:g}", NoFaceWarning, stacklevel=2
        )
        return PhotoRestoration(restored_image=background)
    cropped = [warp_to_template(image, matrix, FACE_SIZE) for matrix in matrices]
    restored = restore_aligned(cropped, restore_faces)
    masks = face_masks(restored, parser)
    pasted = paste_faces(background, restored, masks, matrices, upscale)
    return PhotoRestoration(
        restored_image=pasted,
        faces=faces,
        cropped_faces=cropped,
        restored_faces=list(restored),
    )


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """`left` resized to `right`'s size, then both next to each other (for the cmp/ folder and the demo)."""
    left = resize(as_rgb(left), right.shape[0], right.shape[1])
    return np.concatenate([left, as_rgb(right)], axis=1)
