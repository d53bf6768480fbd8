"""Why a metric may not run, and reading piq's list-of-tensors weights file.

Where a metric network's weights are is `utils.registry`'s business: every metric finds its file with
``find_weights(name, [--metrics_ckpt_dir], offline)`` (registry names ``inception``, ``vgg16``,
``piq_lpips``, ``arcface``, ``awing_fan``; see `evaluation/metrics_ckpt/README.md`), and every file is
read by `utils.weights` (tensors only, never pickled code) and handed to the libraries as tensors.

A missing file is `utils.weights.MissingWeightsError`, a corrupt or unsafe one
`utils.weights.WeightsReadError`; the programs turn either into a one-line "skipped" note for the
metrics that need the file. `MetricUnavailable` covers the other reasons a metric cannot run here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from utils.weights import MissingWeightsError, WeightsReadError, read_weights_file


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (e.g. images too small); the message says why in one line."""


# What makes a metric skip (with one line) rather than stop the program.
SKIP_ERRORS = (MetricUnavailable, MissingWeightsError, WeightsReadError)


def read_tensor_list(path: str | os.PathLike, count: int) -> list[torch.Tensor]:
    """`count` tensors stored as a list (piq's `lpips_weights.pt`) or as a dict, read safely."""
    path = Path(path)
    content = read_weights_file(path)
    values = list(content.values()) if isinstance(content, dict) else list(content) if isinstance(content, (list, tuple)) else []
    if len(values) != count or not all(isinstance(value, torch.Tensor) for value in values):
        raise WeightsReadError(f"{path}: expected {count} tensors, found {len(values)} entries")
    return values
