"""Whole-photo face restoration around PMRF: detection (facexlib RetinaFace), alignment to the FFHQ
512x512 template, one batch through the model, and paste-back with a soft mask.

The model side is any `restore_faces(faces) -> faces` on float (N, 3, 512, 512) tensors in [0, 1].
"""

from whole_image.cli import add_whole_image_arguments, run_whole_image
from whole_image.detect import DetectedFace, load_retinaface, select_faces
from whole_image.pipeline import NoFaceWarning, PhotoRestoration, restore_photo
from whole_image.weights import MissingWeightsError

__all__ = [
    "DetectedFace",
    "MissingWeightsError",
    "NoFaceWarning",
    "PhotoRestoration",
    "add_whole_image_arguments",
    "load_retinaface",
    "restore_photo",
    "run_whole_image",
    "select_faces",
]
