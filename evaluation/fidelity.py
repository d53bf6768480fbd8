"""FID, KID, Inception Score and precision/recall of the restored images against FFHQ.

The numbers are torch-fidelity's: its Inception-v3 ('inception-v3-compat') and its metric functions
with its defaults (10 IS splits, 100 KID subsets, 3 nearest neighbours, seed 2020). Only the parts
around them are the project's own:

- the Inception weights are read by `utils.weights` and handed over as tensors (`utils.inception`);
- features are extracted here and the FFHQ features are cached here, as safetensors files that are
  read back without unpickling anything (torch-fidelity's own cache is unpickled with ``torch.load``
  and ``weights_only=False``; it is never used). A cache file that does not read is recomputed.

Orientation. The authors call ``calculate_metrics(input1=FFHQ, input2=restored)``; torch-fidelity
computes the Inception Score of input1 and "precision" as the share of input1 inside the input2
manifold. So the reference's keys hold:

- ``inception_score_mean`` / ``_std``: the Inception Score of FFHQ, not of the restored images;
- ``precision``: share of FFHQ images inside the restored images' manifold (usually called recall);
- ``recall``: share of restored images inside the FFHQ manifold (usually called precision);
- ``frechet_inception_distance``, ``kernel_inception_distance_*``: FFHQ as the first set (FID is
  symmetric; KID draws its random subsets in that order), ``f_score`` is symmetric.

These keys are written with exactly those values. In addition, ``inception_score_restored_mean`` /
``_std`` hold the Inception Score of the restored images, and ``precision_restored`` /
``recall_restored`` precision and recall in the usual orientation (restored = generated set).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from evaluation.inputs import (
    ImageListDataset,
    batches,
    image_files,
    note_unreadable,
    readable_files,
    unreadable_images,
)
from evaluation.weights import MetricUnavailable
from utils.images import write_atomic
from utils.registry import find_weights
from utils.weights import MissingWeightsError, WeightsReadError, read_checkpoint

FIDELITY_METRICS = ("fid", "kid", "isc", "prc")
FEATURE_LAYERS = {"isc": "logits_unbiased", "fid": "2048", "kid": "2048", "prc": "2048"}
KID_MAX_SUBSET_SIZE = 1000
PRC_FULL_MATRIX_MAX_BYTES = 8 << 30  # beyond this, torch-fidelity's chunked precision/recall
ISC_SPLITS = 10
CACHE_FORMAT = "pmrf-fidelity-features-1"

# The keys of torch-fidelity's results plus the restored-image ones added here.
RESTORED_IS_KEYS = ("inception_score_restored_mean", "inception_score_restored_std")
RESTORED_PRC_KEYS = ("precision_restored", "recall_restored")


class FeatureExtractor:
    """A network mapping uint8 (N, 3, H, W) batches to named features, and an id for the cache.

    `network(batch)` returns a tuple in the order of `layers` (torch-fidelity's convention) or a dict.
    """

    def __init__(self, network: Callable, layers: Sequence[str], cache_id: str):
        self.network, self.layers, self.cache_id = network, tuple(layers), cache_id

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        output = self.network(batch)
        if isinstance(output, dict):
            return {name: output[name] for name in self.layers}
        return dict(zip(self.layers, output))


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def inception_extractor(
    weights_path: str | os.PathLike | None, ckpt_dir: str | os.PathLike | None, offline: bool
) -> FeatureExtractor:
    """torch-fidelity's Inception-v3 from safely read weights (metrics folder, hub cache or download)."""
    from utils.inception import torch_fidelity_inception

    path = Path(weights_path) if weights_path else find_weights("inception", [ckpt_dir], offline)
    layers = sorted(set(FEATURE_LAYERS.values()))
    network = torch_fidelity_inception(path, layers)
    return FeatureExtractor(network, layers, f"inception-v3-compat-{file_digest(path)}")


@torch.inference_mode()
def extract_features(
    files: Sequence[Path],
    extractor: FeatureExtractor,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    desc: str,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(float32 CPU features of the readable files in their order, paths of the unreadable ones).

    Images of different sizes may share a batch: each size goes through the network on its own and
    the features are put back in file order.
    """
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in extractor.layers}
    for images in batches(ImageListDataset(files), batch_size, num_workers, desc=desc, stack=False):
        shapes = sorted({tuple(image.shape) for image in images})
        parts: list[dict[str, torch.Tensor]] = [{} for _ in images]
        for shape in shapes:
            positions = [i for i, image in enumerate(images) if tuple(image.shape) == shape]
            features = extractor(torch.stack([images[i] for i in positions]).to(device))
            for name in extractor.layers:
                values = features[name].detach().to("cpu", torch.float32)
                for row, position in enumerate(positions):
                    parts[position][name] = values[row]
        for part in parts:
            for name in extractor.layers:
                collected[name].append(part[name])
    unreadable = unreadable_images()
    skipped = [str(path) for path in files if str(path) in unreadable]
    if not collected[extractor.layers[0]]:
        raise MetricUnavailable(f"no readable images among {len(files)} file(s)")
    return {name: torch.stack(values) for name, values in collected.items()}, skipped


def default_cache_root() -> Path:
    """`$TORCH_HOME/fidelity_cache`, where torch-fidelity keeps its cache (torch's home: its hub's parent)."""
    return Path(torch.hub.get_dir()).parent / "fidelity_cache"


def folder_cache_path(
    folder: Path, files: Sequence[Path], cache_id: str, cache_root: str | os.PathLike | None
) -> Path:
    """Cache file of a folder's features: keyed by extractor, folder and each file's name, size and date."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    lines = [CACHE_FORMAT, cache_id, str(folder.resolve())]
    for path in files:
        status = path.stat()
        lines.append(f"{path.name}\t{status.st_size}\t{status.st_mtime_ns}")
    digest = hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]
    return root / f"{folder.name}-{digest}.safetensors"


def load_cached_features(
    path: Path, layers: Iterable[str]
) -> tuple[dict[str, torch.Tensor], list[str]] | None:
    """Features from a cache file, or None when it is absent or does not read (never unpickled)."""
    if not path.is_file():
        return None
    try:
        tensors = read_checkpoint(path)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
        skipped = json.loads(metadata.get("unreadable", "[]"))
    except (MissingWeightsError, WeightsReadError, OSError, ValueError) as error:
        print(f"fidelity cache {path} not used ({error.__class__.__name__}); recomputing", file=sys.stderr)
        return None
    if metadata.get("format") != CACHE_FORMAT or not all(name in tensors for name in layers):
        print(f"fidelity cache {path} not used (other contents); recomputing", file=sys.stderr)
        return None
    return {name: tensors[name] for name in layers}, list(skipped)


def save_cached_features(path: Path, features: dict[str, torch.Tensor], skipped: list[str]) -> None:
    from safetensors.torch import save_file

    metadata = {"format": CACHE_FORMAT, "unreadable": json.dumps(skipped)}
    tensors = {name: value.contiguous() for name, value in features.items()}
    try:
        write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    except OSError as error:
        print(f"fidelity cache not written to {path} ({error}); the next run recomputes", file=sys.stderr)


def reference_features(
    folder: Path,
    extractor: FeatureExtractor,
    *,
    use_cache: bool,
    cache_root: str | os.PathLike | None,
    verbose: bool,
    **loader,
) -> dict[str, torch.Tensor]:
    """FFHQ features, from the cache when it is valid; unreadable files are noted either way."""
    files = image_files(folder, "reference folder")
    cache = folder_cache_path(folder, files, extractor.cache_id, cache_root) if use_cache else None
    cached = load_cached_features(cache, extractor.layers) if cache is not None else None
    if cached is not None:
        if verbose:
            print(f"FFHQ features read from {cache}", file=sys.stderr)
        features, skipped = cached
        for path in skipped:
            note_unreadable(path, f"{path}: unreadable when the cached features were computed")
        return features
    features, skipped = extract_features(files, extractor, desc="features (FFHQ)", **loader)
    if cache is not None:
        save_cached_features(cache, features, skipped)
        if verbose:
            print(f"FFHQ features cached in {cache}", file=sys.stderr)
    return features


def fidelity_from_features(
    reference: dict[str, torch.Tensor], restored: dict[str, torch.Tensor], metrics: Iterable[str]
) -> dict[str, float]:
    """The reference's keys (FFHQ as torch-fidelity's input1) plus the restored-image IS and PRC."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    metrics = set(metrics)
    results: dict[str, float] = {}
    if "isc" in metrics:
        for features, keys in (
            (reference["logits_unbiased"], ("inception_score_mean", "inception_score_std")),
            (restored["logits_unbiased"], RESTORED_IS_KEYS),
        ):
            score = isc_features_to_metric(features, splits=min(ISC_SPLITS, len(features)))
            results.update(zip(keys, (score["inception_score_mean"], score["inception_score_std"])))
    if "fid" in metrics:
        statistics = [fid_features_to_statistics(f["2048"]) for f in (reference, restored)]
        results.update(fid_statistics_to_metric(*statistics, verbose=False))
    if "kid" in metrics:
        subset = min(KID_MAX_SUBSET_SIZE, len(restored["2048"]), len(reference["2048"]))
        results.update(
            kid_features_to_metric(reference["2048"], restored["2048"], kid_subset_size=subset, verbose=False)
        )
    if "prc" in metrics:
        # The reference's full distance matrices; for large sets torch-fidelity's chunked version, which
        # gives the same numbers up to float rounding of the distances.
        largest = max(len(reference["2048"]), len(restored["2048"]))
        chunked = largest**2 * 4 > PRC_FULL_MATRIX_MAX_BYTES
        scores = prc_features_to_metric(
            reference["2048"], restored["2048"], save_cpu_ram=chunked, verbose=False
        )
        results.update(scores)
        results[RESTORED_PRC_KEYS[0]] = scores["recall"]  # share of restored images inside FFHQ's manifold
        results[RESTORED_PRC_KEYS[1]] = scores["precision"]  # share of FFHQ inside the restored manifold
    return results


def calculate_fidelity_metrics(
    rec_dir: str | os.PathLike,
    reference_dir: str | os.PathLike,
    *,
    metrics: Iterable[str] = FIDELITY_METRICS,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    feature_extractor: FeatureExtractor | None = None,
    feature_extractor_weights_path: str | os.PathLike | None = None,
    ckpt_dir: str | os.PathLike | None = None,
    offline: bool = False,
    cache_root: str | os.PathLike | None = None,
    use_cache: bool = True,
    verbose: bool = True,
) -> dict[str, float]:
    """FID / KID / IS / PRC of the restored images against `reference_dir` (see the module's description)."""
    metrics = set(metrics)
    unknown = metrics - set(FIDELITY_METRICS)
    if unknown or not metrics:
        raise ValueError(
            f"fidelity metrics must be among {', '.join(FIDELITY_METRICS)}, got {sorted(metrics)}"
        )
    rec_files, _ = readable_files(image_files(rec_dir, "--rec_path"))
    reference_dir = Path(reference_dir)
    image_files(reference_dir, "reference folder")
    if feature_extractor is None:
        feature_extractor = inception_extractor(feature_extractor_weights_path, ckpt_dir, offline)
    device = torch.device(device)
    if hasattr(feature_extractor.network, "to"):
        feature_extractor.network.to(device)
    loader = {"device": device, "batch_size": batch_size, "num_workers": num_workers}
    reference = reference_features(
        reference_dir,
        feature_extractor,
        use_cache=use_cache,
        cache_root=cache_root,
        verbose=verbose,
        **loader,
    )
    restored, _ = extract_features(rec_files, feature_extractor, desc="features (restored)", **loader)
    return fidelity_from_features(reference, restored, metrics)
