"""Whole-photo face restoration around PMRF: detection (RetinaFace or MTCNN), alignment to the FFHQ
512x512 template, the model in batches, and paste-back with a soft mask.

The model side is any `restore_faces(faces) -> faces` on float (N, 3, 512, 512) tensors in [0, 1], such
as `lightning_models.restoration.FaceRestorer`.
"""

from utils.weights import MissingWeightsError
from whole_image.cli import WholeImageOptions, add_whole_image_arguments, run_whole_image
from whole_image.detect import (
    DetectedFace,
    find_faces,
    load_detector,
    load_mtcnn,
    load_retinaface,
    select_faces,
)
from whole_image.pipeline import NoFaceWarning, PhotoRestoration, restore_photo

__all__ = [
    "DetectedFace",
    "MissingWeightsError",
    "NoFaceWarning",
    "PhotoRestoration",
    "WholeImageOptions",
    "add_whole_image_arguments",
    "find_faces",
    "load_detector",
    "load_mtcnn",
    "load_retinaface",
    "restore_photo",
    "run_whole_image",
    "select_faces",
]
