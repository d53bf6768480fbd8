"""FID, KID, Inception Score and precision/recall with torch-fidelity.

The reference folder (FFHQ) is registered as a torch-fidelity data set, so its Inception features
are cached after the first run. The cache is keyed by the folder's path and file names, so a
changed folder is never served stale features.

Order of the inputs: torch-fidelity treats `input1` as the generated set (its Inception Score,
precision = share of input1 inside the input2 manifold) and `input2` as the real one. The restored
images are input1 here. The authors' script passed FFHQ first, which makes its "inception score"
that of FFHQ and swaps precision and recall; `reference_first=True` reproduces that.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from evaluation.inputs import ImageListDataset, check_sizes, image_files
from evaluation.weights import INCEPTION_WEIGHTS, find_hub_weights, read_weights

FIDELITY_METRICS = ("fid", "kid", "isc", "prc")
DEFAULT_FEATURE_EXTRACTOR = "inception-v3-compat"
KID_MAX_SUBSET_SIZE = 1000
ISC_SPLITS = 10


def register_reference_folder(folder: str | os.PathLike) -> tuple[str, int]:
    """Register `folder` with torch-fidelity; return (data-set name, number of images)."""
    from torch_fidelity.registry import DATASETS_REGISTRY, register_dataset

    folder = Path(folder).resolve()
    files = image_files(folder, "reference folder")
    digest = hashlib.sha1("\n".join([str(folder)] + [path.name for path in files]).encode()).hexdigest()[:12]
    name = f"{folder.name}-{digest}"
    if name not in DATASETS_REGISTRY:
        register_dataset(name, lambda root, download: ImageListDataset(files))
    return name, len(files)


def inception_weights(
    weights_path: str | os.PathLike | None, ckpt_dir: str | os.PathLike | None, offline: bool
) -> str:
    """Checked path of torch-fidelity's Inception weights (metrics folder, hub cache or download)."""
    path = Path(weights_path) if weights_path else find_hub_weights(INCEPTION_WEIGHTS, ckpt_dir, offline)
    read_weights(path)  # torch-fidelity unpickles without weights_only; make sure it holds only tensors
    return str(path)


def calculate_fidelity_metrics(
    rec_dir: str | os.PathLike,
    reference_dir: str | os.PathLike,
    *,
    metrics: Iterable[str] = FIDELITY_METRICS,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    feature_extractor: str | None = None,
    feature_extractor_weights_path: str | os.PathLike | None = None,
    ckpt_dir: str | os.PathLike | None = None,
    offline: bool = False,
    cache_root: str | os.PathLike | None = None,
    reference_first: bool = False,
    verbose: bool = True,
) -> dict[str, float]:
    """torch-fidelity's metrics (its key names) of the restored images against `reference_dir`."""
    from torch_fidelity import calculate_metrics

    metrics = set(metrics)
    unknown = metrics - set(FIDELITY_METRICS)
    if unknown or not metrics:
        raise ValueError(
            f"fidelity metrics must be among {', '.join(FIDELITY_METRICS)}, got {sorted(metrics)}"
        )
    rec_files = image_files(rec_dir, "--rec_path")
    same_size = check_sizes(rec_files)
    reference_name, num_reference = register_reference_folder(reference_dir)
    options = {}
    if feature_extractor in (None, DEFAULT_FEATURE_EXTRACTOR):
        options["feature_extractor_weights_path"] = inception_weights(
            feature_extractor_weights_path, ckpt_dir, offline
        )
    else:
        options["feature_extractor"] = feature_extractor
    restored = ImageListDataset(rec_files)
    inputs = (reference_name, restored) if reference_first else (restored, reference_name)
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    try:
        return calculate_metrics(
            input1=inputs[0],
            input2=inputs[1],
            datasets_root=str(Path(reference_dir).resolve()),
            datasets_download=False,
            cuda=device.type == "cuda",
            batch_size=batch_size if same_size else 1,
            isc="isc" in metrics,
            fid="fid" in metrics,
            kid="kid" in metrics,
            prc="prc" in metrics,
            kid_subset_size=min(KID_MAX_SUBSET_SIZE, len(rec_files), num_reference),
            isc_splits=min(ISC_SPLITS, num_reference if reference_first else len(rec_files)),
            cache=True,
            cache_root=None if cache_root is None else str(cache_root),
            save_cpu_ram=num_workers == 0,
            verbose=verbose,
            **options,
        )
    except ValueError as error:  # torch-fidelity reports bad settings through ValueError
        raise ValueError(f"torch-fidelity: {error}") from None
