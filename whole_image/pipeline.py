"""One photo through the whole pipeline: detect, align, restore in batches, paste back.

The model side is any `restore_faces(faces) -> faces` on float (N, 3, 512, 512) tensors in [0, 1];
when it also has `.restore(faces)` returning an object with `xhat` and `posterior_mean` (as
`lightning_models.restoration.FaceRestorer` does), the posterior-mean faces can be kept too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from utils.images import is_gray, tensor_to_uint8
from whole_image.align import BORDER_FILL, FACE_SIZE, GRAY_BORDER_FILL, alignment_matrix, warp_to_template
from whole_image.detect import MIN_EYE_DISTANCE, DetectedFace, FaceDetector, find_faces, select_faces
from whole_image.paste import FaceParser, face_masks, paste_faces
from whole_image.upsample import BackgroundUpsampler, output_size, resize, resize_background

RestoreFaces = Callable[[torch.Tensor], torch.Tensor]


class NoFaceWarning(UserWarning):
    """A photo had no face to restore; it was only resized."""


@dataclass
class PhotoRestoration:
    """A restored photo. Images are uint8; the photos keep the input's alpha channel when it had one."""

    restored_image: np.ndarray  # (H * scale, W * scale, 3 or 4)
    faces: list[DetectedFace] = field(default_factory=list)  # the restored faces, in the order below
    cropped_faces: list[np.ndarray] = field(default_factory=list)  # aligned 512x512x3 inputs
    restored_faces: list[np.ndarray] = field(default_factory=list)  # what the model made of them
    posterior_mean_faces: list[np.ndarray] | None = None  # the posterior-mean network's faces, if kept
    posterior_mean_image: np.ndarray | None = None  # the photo with those faces pasted instead
    gray: bool = False  # the input was gray, and so is every output
    detected: int = 0  # faces the detector found; more than len(faces) when max_faces left some out


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4) uint8 -> (H, W, 3) uint8; alpha is dropped."""
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


def alpha_of(image: np.ndarray) -> np.ndarray | None:
    """The alpha channel of a gray+alpha or RGBA image, else None."""
    image = np.asarray(image)
    return np.ascontiguousarray(image[:, :, -1]) if image.ndim == 3 and image.shape[2] in (2, 4) else None


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the same with three equal channels (ITU-R BT.601 luma)."""
    luma = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)
    return np.repeat(luma[:, :, None], 3, axis=2)


def with_alpha(image: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """`image` with `alpha` resized to it attached (unchanged when alpha is None). Alpha is enlarged
    bilinearly: Lanczos would ring around hard transparency edges and leave halos."""
    if alpha is None:
        return image
    height, width = image.shape[:2]
    if alpha.shape[:2] != (height, width):
        shrinking = height * width < alpha.shape[0] * alpha.shape[1]
        alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.concatenate([image, alpha[:, :, None]], axis=2)


def faces_to_tensor(faces: list[np.ndarray]) -> torch.Tensor:
    """uint8 (S, S, 3) crops -> float (N, 3, S, S) in [0, 1]."""
    return torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float().div(255.0)


class NonFiniteFacesError(ValueError):
    """The model's faces hold NaN or infinite values: nothing made from them is written."""


def tensor_to_faces(batch: torch.Tensor) -> np.ndarray:
    """float (N, 3, S, S) in [0, 1] -> uint8 (N, S, S, 3) by utils.images.tensor_to_uint8 (torchvision's
    rounding). NonFiniteFacesError when a value is NaN or infinite: nothing made from them is written."""
    if not bool(torch.isfinite(batch.detach()).all()):
        raise NonFiniteFacesError("the model's faces hold NaN or infinite values (its weights or the precision "
                                  "cannot handle this photo): not written")
    return tensor_to_uint8(batch)


def _checked(output: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    if tuple(output.shape) != tuple(batch.shape):
        raise ValueError(f"restore_faces returned shape {tuple(output.shape)} for input {tuple(batch.shape)}")
    return output


def run_restorer(
    faces: list[np.ndarray],
    restore_faces: RestoreFaces,
    posterior_mean: bool = False,
    batch_size: int | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The uint8 crops through the model, `batch_size` at a time (default: all at once), each with its
    row of `noise` when given (the restorer's `noise=`; video tracks keep one each).

    Returns PMRF's faces and, when `posterior_mean` is asked for and the restorer gives it, the
    posterior-mean faces (else None).
    """
    restore = getattr(restore_faces, "restore", None) if posterior_mean else None
    size = batch_size or len(faces)
    xhats, means = [], []
    for start in range(0, len(faces), size):
        batch = faces_to_tensor(faces[start : start + size])
        given = {} if noise is None else {"noise": noise[start : start + size]}
        with torch.no_grad():
            if callable(restore):
                result = restore(batch, **given)
                xhats.append(tensor_to_faces(_checked(result.xhat, batch)))
                mean = getattr(result, "posterior_mean", None)
                means.append(None if mean is None else tensor_to_faces(_checked(mean, batch)))
            else:
                xhats.append(tensor_to_faces(_checked(restore_faces(batch, **given), batch)))
                means.append(None)
    posterior = np.concatenate(means) if means and all(m is not None for m in means) else None
    return np.concatenate(xhats), posterior


def restore_crops(
    faces: list[np.ndarray],
    restore_faces: RestoreFaces,
    batch_size: int | None = None,
    noise: torch.Tensor | None = None,
) -> np.ndarray:
    """PMRF's faces for uint8 aligned crops (N, S, S, 3 -> N, S, S, 3): `run_restorer` without the
    posterior mean. The model's output must keep the batch's shape."""
    return run_restorer(faces, restore_faces, batch_size=batch_size, noise=noise)[0]


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


def upscaled_background(
    image: np.ndarray, upscale: float, bg_upsampler: BackgroundUpsampler | None, gray: bool
) -> np.ndarray:
    height, width = output_size(image.shape[0], image.shape[1], upscale)
    background = (bg_upsampler or resize_background)(image, upscale)
    if background.shape[:2] != (height, width):
        background = resize(background, height, width)
    return to_gray(background) if gray else background


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
    posterior_mean: bool = False,
    batch_size: int | None = None,
    min_eye_distance: float = MIN_EYE_DISTANCE,
) -> PhotoRestoration:
    """Restore every selected face of `image` and paste it into the background resized by `upscale`.

    * `image`: (H, W) gray, (H, W, 3) RGB, or with alpha (H, W, 2|4), uint8. The faces are pasted on
      the RGB photo and the alpha channel, resized, is attached again.
    * A gray photo gives a gray result: the model's faces and the background are made gray.
    * Faces come from `whole_image.detect.find_faces` (small photos enlarged for detection only; eyes
      closer than `min_eye_distance` pixels in the detection frame are ignored).
    * With `posterior_mean`, a restorer that gives the posterior mean also yields the photo with the
      posterior-mean faces pasted instead (same masks).

    A photo without faces comes back resized only, with a NoFaceWarning naming it.
    """
    if not upscale > 0:
        raise ValueError(f"upscale must be positive, got {upscale}")
    alpha = alpha_of(image)
    rgb = as_rgb(image)
    gray = is_gray(rgb)
    if gray:
        rgb = to_gray(rgb)
    height, width = rgb.shape[:2]
    detections = find_faces(rgb, detector, min_eye_distance=min_eye_distance)
    faces, matrices = aligned_faces(detections, height, width, only_center_face, max_faces)
    background = upscaled_background(rgb, upscale, bg_upsampler, gray)
    if not faces:
        warnings.warn(f"{name}: no face detected; copied through, resized x{upscale:g}", NoFaceWarning, stacklevel=2)
        return PhotoRestoration(restored_image=with_alpha(background, alpha), gray=gray, detected=len(detections))
    fill = GRAY_BORDER_FILL if gray else BORDER_FILL
    cropped = [warp_to_template(rgb, matrix, FACE_SIZE, fill) for matrix in matrices]
    restored, means = run_restorer(cropped, restore_faces, posterior_mean, batch_size)
    if gray:
        restored = np.stack([to_gray(face) for face in restored])
        means = None if means is None else np.stack([to_gray(face) for face in means])
    masks = face_masks(restored, parser)
    result = PhotoRestoration(
        restored_image=with_alpha(paste_faces(background, restored, masks, matrices, upscale), alpha),
        faces=faces,
        cropped_faces=cropped,
        restored_faces=list(restored),
        gray=gray,
        detected=len(detections),
    )
    if means is not None:
        result.posterior_mean_faces = list(means)
        result.posterior_mean_image = with_alpha(paste_faces(background, means, masks, matrices, upscale), alpha)
    return result


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """`left` resized to `right`'s size, then both next to each other (cmp/ images and the demo); RGB."""
    right = as_rgb(right)
    left = resize(as_rgb(left), right.shape[0], right.shape[1])
    return np.concatenate([left, right], axis=1)
