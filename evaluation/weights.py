"""Where the metric networks' weights are, and reading them (always through `utils.weights`).

Two kinds of files are involved:

- the face networks of the paper's evaluation (ArcFace `resnet18_110.pth`, AWing FAN
  `alignment_WFLW_4HG.pth`), which the user puts in `evaluation/metrics_ckpt/`;
- the ImageNet networks that the metric libraries normally download into torch's hub cache
  (Inception for FID/KID/IS/PRC, VGG16 and piq's LPIPS head). They are looked up in the metrics
  folder first, then in `$TORCH_HOME/hub/checkpoints/`, and downloaded there only when allowed.

Every file is read by `utils.weights` (tensors only, never pickled code) and handed to the libraries
as tensors. A missing file is `utils.weights.MissingWeightsError`, a corrupt or unsafe one
`utils.weights.WeightsReadError`; the programs turn either into a one-line "skipped" note for the
metrics that need the file. `MetricUnavailable` covers the other reasons a metric cannot run here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.inception import INCEPTION_WEIGHTS_NAME, INCEPTION_WEIGHTS_URL
from utils.weights import (
    MissingWeightsError,
    WeightsReadError,
    read_weights_file,
    require_file,
)

DEFAULT_CKPT_DIR = Path(__file__).resolve().parent / "metrics_ckpt"
ARCFACE_FILE = "resnet18_110.pth"
FAN_FILE = "alignment_WFLW_4HG.pth"
FACE_WEIGHTS_HINT = "; see evaluation/metrics_ckpt/README.md for the source"


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (e.g. images too small); the message says why in one line."""


# What makes a metric skip (with one line) rather than stop the program.
SKIP_ERRORS = (MetricUnavailable, MissingWeightsError, WeightsReadError)


@dataclass(frozen=True)
class HubWeights:
    """A file the metric libraries usually download into torch's hub cache."""

    file_name: str
    url: str


INCEPTION_WEIGHTS = HubWeights(INCEPTION_WEIGHTS_NAME, INCEPTION_WEIGHTS_URL)
VGG16_WEIGHTS = HubWeights("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth")
PIQ_LPIPS_WEIGHTS = HubWeights(
    "lpips_weights.pt",
    "https://github.com/photosynthesis-team/photosynthesis.metrics/releases/download/v0.4.0/lpips_weights.pt",
)


def hub_checkpoint_dir() -> Path:
    """Where `torch.hub` keeps downloaded weights (`$TORCH_HOME/hub/checkpoints`)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_metric_checkpoint(ckpt_dir: str | os.PathLike, file_name: str, what: str) -> Path:
    """Path of a face-network checkpoint the user must provide, or MissingWeightsError."""
    return require_file(Path(ckpt_dir) / file_name, what, hint=FACE_WEIGHTS_HINT)


def find_hub_weights(
    weights: HubWeights, ckpt_dir: str | os.PathLike | None = None, offline: bool = False
) -> Path:
    """Local path of a library weight file, downloading it into the hub cache unless `offline`."""
    cached = hub_checkpoint_dir() / weights.file_name
    for candidate in ([Path(ckpt_dir) / weights.file_name] if ckpt_dir else []) + [cached]:
        if candidate.is_file():
            return candidate
    where = f"put it at {cached}" + (f" or {Path(ckpt_dir) / weights.file_name}" if ckpt_dir else "")
    if offline:
        raise MissingWeightsError(f"{weights.file_name} missing (offline), {where} (from {weights.url})")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(cached), progress=True)
    except Exception as error:  # any network failure means the same thing to the user
        raise MissingWeightsError(
            f"{weights.file_name} missing and its download failed ({error.__class__.__name__}), "
            f"{where} (from {weights.url})"
        ) from None
    return cached


def read_tensor_list(path: str | os.PathLike, count: int) -> list[torch.Tensor]:
    """`count` tensors stored as a list (piq's `lpips_weights.pt`) or as a dict, read safely."""
    path = Path(path)
    content = read_weights_file(path)
    values = list(content.values()) if isinstance(content, dict) else list(content) if isinstance(content, (list, tuple)) else []
    if len(values) != count or not all(isinstance(value, torch.Tensor) for value in values):
        raise WeightsReadError(f"{path}: expected {count} tensors, found {len(values)} entries")
    return values
