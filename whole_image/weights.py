"""Where the detector, parser and background upsampler weights live, and how they are loaded.

Each file is looked up in a local folder first. When it is absent, the library that owns the
network downloads it into that folder (facexlib for the face networks, BasicSR for Real-ESRGAN).
When that fails too (offline), `MissingWeightsError` says which file is missing and where it goes.
Checkpoints are always read with ``weights_only=True``: facexlib's own loaders unpickle them fully.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

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

Downloader = Callable[[str, Path, str], object]


class MissingWeightsError(FileNotFoundError):
    """A weights file is neither on disk nor downloadable; the message names the file and folder."""


def face_weights_dir(folder: str | os.PathLike | None = None) -> Path:
    """The facexlib weights folder: `folder`, else $PMRF_FACE_WEIGHTS, else checkpoints/facexlib."""
    if folder:
        return Path(folder).expanduser()
    if os.environ.get(FACE_WEIGHTS_ENV):
        return Path(os.environ[FACE_WEIGHTS_ENV]).expanduser()
    return DEFAULT_FACE_WEIGHTS_DIR


def download_with_facexlib(url: str, folder: Path, file_name: str) -> object:
    from facexlib.utils import load_file_from_url

    return load_file_from_url(
        url=url, model_dir=None, progress=True, file_name=file_name, save_dir=str(folder)
    )


def download_with_basicsr(url: str, folder: Path, file_name: str) -> object:
    import compat.basicsr_torchvision  # noqa: F401  (must precede any basicsr import)
    from basicsr.utils.download_util import load_file_from_url

    return load_file_from_url(url=url, model_dir=str(folder), progress=True, file_name=file_name)


DOWNLOADERS: dict[str, Downloader] = {"facexlib": download_with_facexlib, "basicsr": download_with_basicsr}


def find_or_download(
    folder: str | os.PathLike,
    file_name: str,
    url: str,
    what: str,
    download: str = "facexlib",
    allow_download: bool = True,
) -> Path:
    """Path of `folder/file_name`, downloaded from `url` on first use by the library named in `download`."""
    path = Path(folder) / file_name
    if path.is_file():
        return path
    reason = "downloads are disabled"
    if allow_download:
        try:
            DOWNLOADERS[download](url, Path(folder), file_name)
        except Exception as error:  # offline, proxy, disk full...: all end in the same advice
            reason = f"download failed: {error.__class__.__name__}: {error}"
        if path.is_file():
            return path
    raise MissingWeightsError(
        f"{what} weights '{file_name}' not found in {Path(folder).resolve()} ({reason}); "
        f"download {url} and put it at {path.resolve()}"
    )


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely and return its plain state dict.

    Accepts a bare state dict or BasicSR's {'params_ema': ...} / {'params': ...} wrappers, and strips the
    'module.' prefix that DataParallel adds.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: cannot read checkpoint ({error.__class__.__name__}: {error})") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(checkpoint).__name__}")
    for wrapper in ("params_ema", "params", "state_dict"):
        if isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def load_into(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load the checkpoint at `path` into `network` strictly; a mismatch is a one-line error."""
    state_dict = load_state_dict(path)
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        details = " ".join(str(error).split())
        details = details if len(details) < 300 else details[:300] + "..."
        raise ValueError(f"{path}: does not fit {type(network).__name__} ({details})") from None
    return network
