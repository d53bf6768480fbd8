"""Finding and reading the weights of the metric networks.

Two kinds of files are involved:

- the face networks of the paper's evaluation (ArcFace `resnet18_110.pth`, AWing FAN
  `alignment_WFLW_4HG.pth`), which the user puts in `evaluation/metrics_ckpt/`;
- the ImageNet networks that the metric libraries normally download into torch's hub cache
  (Inception for torch-fidelity, VGG16 and piq's LPIPS head). They are looked up in the metrics
  folder first, then in `$TORCH_HOME/hub/checkpoints/`, and downloaded there only when allowed.

A missing file raises `MissingWeightsError`, whose message names the file and where to put it; the
command-line programs turn it into a one-line "skipped" note instead of a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_CKPT_DIR = Path(__file__).resolve().parent / "metrics_ckpt"
ARCFACE_FILE = "resnet18_110.pth"
FAN_FILE = "alignment_WFLW_4HG.pth"


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (e.g. missing weights); the message says why in one line."""


class MissingWeightsError(MetricUnavailable):
    """A weight file the metric needs is not on disk and could not be fetched."""


@dataclass(frozen=True)
class HubWeights:
    """A file the metric libraries usually download into torch's hub cache."""

    file_name: str
    url: str


INCEPTION_WEIGHTS = HubWeights(
    "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)
VGG16_WEIGHTS = HubWeights("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth")
PIQ_LPIPS_WEIGHTS = HubWeights(
    "lpips_weights.pt",
    "https://github.com/photosynthesis-team/photosynthesis.metrics/releases/download/v0.4.0/lpips_weights.pt",
)


def hub_checkpoint_dir() -> Path:
    """Where `torch.hub` keeps downloaded weights (`$TORCH_HOME/hub/checkpoints`)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_metric_checkpoint(ckpt_dir: str | os.PathLike, file_name: str) -> Path:
    """Path of a face-network checkpoint the user must provide, or MissingWeightsError."""
    path = Path(ckpt_dir) / file_name
    if not path.is_file():
        raise MissingWeightsError(
            f"{file_name} missing, put it at {path} (see evaluation/metrics_ckpt/README.md for the source)"
        )
    return path


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


def read_weights(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (`weights_only=True`), pick `key` if given, drop a DataParallel prefix."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: cannot read weights ({error.__class__.__name__}: {error})") from None
    if key is not None:
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            raise ValueError(f"{path}: expected the weights under the key '{key}'")
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(checkpoint).__name__}")
    if checkpoint and all(name.startswith("module.") for name in checkpoint):
        checkpoint = {name[len("module.") :]: value for name, value in checkpoint.items()}
    return checkpoint


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """`model.load_state_dict(strict)` with a short message naming the file when keys or shapes differ."""
    expected = model.state_dict()
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    wrong_shape = [
        name
        for name in expected
        if name in state_dict and tuple(state_dict[name].shape) != tuple(expected[name].shape)
    ]
    if missing or unexpected or wrong_shape:
        details = "; ".join(
            f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for label, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong_shape),
            )
            if names
        )
        raise ValueError(f"{path}: does not match {type(model).__name__} ({details})")
    model.load_state_dict(state_dict, strict=True)
