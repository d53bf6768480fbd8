"""Where the detector, parser and background-upsampler weights live.

Every file is read through `utils.weights` (tensors only, never arbitrary pickles) and nothing is
downloaded: a file that is not on disk is a `utils.weights.MissingWeightsError` that names it, says
where it goes and where to get it. MTCNN's three small networks ship inside the facenet-pytorch wheel,
so whole-photo restoration works offline on a fresh install.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from utils.weights import MissingWeightsError, load_into, load_state_dict, require_file

REPO_ROOT = Path(__file__).resolve().parents[1]
FACE_WEIGHTS_ENV = "PMRF_FACE_WEIGHTS"
DEFAULT_FACE_WEIGHTS_DIR = REPO_ROOT / "checkpoints" / "facexlib"
DEFAULT_REALESRGAN_WEIGHTS_DIR = REPO_ROOT / "checkpoints" / "realesrgan"

DETECTOR_FILE = "detection_Resnet50_Final.pth"
DETECTOR_URL = "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"
PARSER_FILE = "parsing_parsenet.pth"
PARSER_URL = "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth"
REALESRGAN_FILE = "RealESRGAN_x2plus.pth"
REALESRGAN_URL = "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth"
MTCNN_FILES = ("pnet.pt", "rnet.pt", "onet.pt")

__all__ = [
    "DETECTOR_FILE",
    "MissingWeightsError",
    "PARSER_FILE",
    "REALESRGAN_FILE",
    "face_weights_dir",
    "load_weights_into",
    "mtcnn_weights_dir",
    "parser_path",
    "realesrgan_path",
    "retinaface_path",
]


def face_weights_dir(folder: str | os.PathLike | None = None) -> Path:
    """The facexlib weights folder: `folder`, else $PMRF_FACE_WEIGHTS, else checkpoints/facexlib."""
    if folder:
        return Path(folder).expanduser()
    if os.environ.get(FACE_WEIGHTS_ENV):
        return Path(os.environ[FACE_WEIGHTS_ENV]).expanduser()
    return DEFAULT_FACE_WEIGHTS_DIR


def retinaface_path(weights_dir: str | os.PathLike | None = None) -> Path:
    """Where RetinaFace's weights are expected (the file may be absent)."""
    return face_weights_dir(weights_dir) / DETECTOR_FILE


def require_retinaface(weights_dir: str | os.PathLike | None = None) -> Path:
    return require_file(
        retinaface_path(weights_dir),
        "RetinaFace face detector",
        DETECTOR_URL,
        hint="; or use --detector mtcnn, which needs no download",
    )


def parser_path(weights_dir: str | os.PathLike | None = None) -> Path:
    return require_file(face_weights_dir(weights_dir) / PARSER_FILE, "ParseNet face parsing", PARSER_URL)


def realesrgan_path(weights_dir: str | os.PathLike | None = None) -> Path:
    folder = Path(weights_dir).expanduser() if weights_dir else DEFAULT_REALESRGAN_WEIGHTS_DIR
    return require_file(folder / REALESRGAN_FILE, "Real-ESRGAN background", REALESRGAN_URL)


def mtcnn_weights_dir() -> Path:
    """The folder inside the installed facenet-pytorch package that holds MTCNN's weights."""
    try:
        import facenet_pytorch
    except ImportError:
        raise MissingWeightsError(
            "MTCNN face detector: facenet-pytorch is not installed "
            "(pip install --no-deps facenet-pytorch); or use --detector retinaface"
        ) from None
    return Path(facenet_pytorch.__file__).resolve().parent / "data"


def load_weights_into(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """`network` with the state dict of `path`, read safely and loaded strictly (utils.weights)."""
    return load_into(network, load_state_dict(path), path)
