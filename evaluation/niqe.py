"""NIQE (no-reference quality), BasicSR's definition: Y channel, no border crop, mean over images.

NIQE runs on the CPU in NumPy; DataLoader workers compute it for several images at once.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

import compat.basicsr_torchvision  # noqa: F401  (must precede basicsr)

# isort: split
from basicsr.metrics.niqe import calculate_niqe as basicsr_niqe

from evaluation.inputs import ImageListDataset, batches, image_files, image_size, readable_files
from evaluation.weights import MetricUnavailable

MIN_NIQE_SIZE = 192  # BasicSR fits 96-pixel blocks at full and half scale; smaller images fail


def niqe_of_rgb(rgb: np.ndarray) -> float:
    """NIQE of one uint8 RGB image (lower is better)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(
            basicsr_niqe(np.ascontiguousarray(rgb[:, :, ::-1]), 0, input_order="HWC", convert_to="y")
        )


def calculate_niqe(folder: str | os.PathLike, *, num_workers: int = 0) -> float:
    """Mean NIQE over the (readable) images of `folder`."""
    files, _ = readable_files(image_files(folder, "--rec_path"))
    for path in files:
        width, height = image_size(path)
        if min(width, height) < MIN_NIQE_SIZE:
            raise MetricUnavailable(
                f"{path} is {width}x{height}; NIQE needs at least {MIN_NIQE_SIZE} pixels a side"
            )
    total, count = 0.0, 0
    for values in batches(ImageListDataset(files, niqe_of_rgb), 8, num_workers, desc="niqe"):
        total += float(values.double().sum())
        count += len(values)
    if count == 0:
        raise MetricUnavailable("no readable images")
    return total / count
