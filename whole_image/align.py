"""Alignment of a face to the 512x512 FFHQ template from its five landmarks, and the way back."""

from __future__ import annotations

import cv2
import numpy as np

FACE_SIZE = 512
# Five-point template of FFHQ-aligned 512x512 faces (left eye, right eye, nose, mouth corners), the
# standard used by facexlib's FaceRestoreHelper, GFPGAN and CodeFormer.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)
# Fill for crop pixels outside the photo: a neutral gray, as in facexlib.
BORDER_FILL = (135, 133, 132)
GRAY_BORDER_FILL = (133, 133, 133)  # the same for gray photos, which must stay gray


def alignment_matrix(landmarks: np.ndarray, face_size: int = FACE_SIZE) -> np.ndarray:
    """2x3 similarity transform (rotation, uniform scale, shift) from photo pixels to the aligned crop."""
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    template = FFHQ_TEMPLATE_512 * (face_size / 512.0)
    matrix, _ = cv2.estimateAffinePartial2D(landmarks, template, method=cv2.LMEDS)
    if matrix is None or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:, :2])) < 1e-12:
        raise ValueError("cannot align face: its five landmarks are degenerate")
    return matrix


def warp_to_template(
    image: np.ndarray, matrix: np.ndarray, face_size: int = FACE_SIZE, fill: tuple[int, int, int] = BORDER_FILL
) -> np.ndarray:
    """The aligned face_size x face_size crop of `image` under `matrix`; outside the photo is `fill`."""
    return cv2.warpAffine(
        image,
        matrix,
        (face_size, face_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=tuple(int(v) for v in fill),
    )


def inverse_matrix(matrix: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """2x3 transform from aligned-crop pixels to the photo resized by `scale`.

    Pixel centres follow cv2.resize: photo pixel x lands at scale * x + (scale - 1) / 2, so the pasted
    faces line up with the resized background at every scale.
    """
    inverse = cv2.invertAffineTransform(matrix).astype(np.float64)
    inverse *= scale
    inverse[:, 2] += (scale - 1.0) / 2.0
    return inverse


def warp_from_template(
    face: np.ndarray, inverse: np.ndarray, height: int, width: int, flags: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """Map an aligned crop (or mask) back into a height x width canvas; outside the crop is 0."""
    return cv2.warpAffine(
        face, inverse, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
