"""Whole-photo and video face restoration around PMRF: detection (RetinaFace or MTCNN), alignment to the
FFHQ 512x512 template, the model in batches, and paste-back with a soft mask.

The model side is any `restore_faces(faces) -> faces` on float (N, 3, 512, 512) tensors in [0, 1], such
as `lightning_models.restoration.FaceRestorer`. One photo: `restore_photo`; one video: `restore_video`;
a folder of either: `restore_photos` / `restore_videos` (library: they return a report and raise, never
exit). The command-line layers are `whole_image.cli` and `whole_image.video_cli`.
"""

from utils.weights import MissingWeightsError
from whole_image.detect import (
    DetectedFace,
    find_faces,
    load_detector,
    load_mtcnn,
    load_retinaface,
    select_faces,
)
from whole_image.options import ToolOptions, WholeImageOptions
from whole_image.photo_batch import PhotoReport, restore_photos
from whole_image.pipeline import NoFaceWarning, PhotoRestoration, restore_crops, restore_photo
from whole_image.tools import WholeImageTools, load_tools
from whole_image.video import VideoOptions, restore_video
from whole_image.video_batch import VideoReport, restore_videos

__all__ = [
    "DetectedFace",
    "MissingWeightsError",
    "NoFaceWarning",
    "PhotoReport",
    "PhotoRestoration",
    "ToolOptions",
    "VideoOptions",
    "VideoReport",
    "WholeImageOptions",
    "WholeImageTools",
    "find_faces",
    "load_detector",
    "load_mtcnn",
    "load_retinaface",
    "load_tools",
    "restore_crops",
    "restore_photo",
    "restore_photos",
    "restore_video",
    "restore_videos",
    "select_faces",
]
