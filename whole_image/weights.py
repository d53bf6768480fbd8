"""How the detector, parser and background-upsampler weights are found and read.

Their files are `utils.registry` entries ("retinaface", "parsenet", "realesrgan_x2plus": file name,
download address, default folder), found with
`find_weights(name, [the user's folder], offline=True)`: nothing is downloaded, and a file that is not
on disk is the registry's one-line MissingWeightsError naming it, where it goes and where to get it.
Every file is read through `utils.weights` (tensors only, never arbitrary pickles). MTCNN's three small
networks ship inside the facenet-pytorch wheel, so whole-photo restoration works offline on a fresh
install.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from utils.registry import find_weights
from utils.weights import MissingWeightsError, load_into, load_state_dict

MTCNN_FILES = ("pnet.pt", "rnet.pt", "onet.pt")

__all__ = ["find_tool_weights", "load_weights_into", "mtcnn_weights_dir"]


def find_tool_weights(name: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """The registry's file `name`: in `weights_dir` (--face_weights_dir, --realesrgan_weights_dir), else
    in its default folder; never downloaded."""
    return find_weights(name, [weights_dir], offline=True)


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
