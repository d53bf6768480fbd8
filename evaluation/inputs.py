"""Image folders as the metrics see them: matched file names, checked sizes, batched loading.

Images are read with `utils.images.read_rgb` unless a metric asks for another reader, so gray, RGBA,
palette and 16-bit files become 8-bit RGB and non-image files are ignored. Datasets yield uint8
tensors (3, H, W); a `transform` may turn the decoded array into something else first.

A file that cannot be read (undecodable, truncated, or a header claiming more pixels than the
decompression-bomb limit) never stops a run: it is left out, named once on stderr, and listed at
the end (`unreadable_images()`). Of a pair, both images are left out of the paired metrics.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from evaluation.weights import MetricUnavailable
from utils.images import ImageReadError, displayed_size, list_images, read_rgb

MAX_LISTED_DIFFERENCES = 5

_UNREADABLE: dict[str, str] = {}
_SIZES: dict[tuple[str, int, int], tuple[int, int]] = {}


# ---------------------------------------------------------------------------- unreadable files


@dataclass(frozen=True)
class Unreadable:
    """What a dataset returns for a file it cannot decode (it travels back from loader workers)."""

    path: str
    reason: str


def note_unreadable(path: str | os.PathLike, reason: str) -> None:
    """Record a skipped file; the first time, say so on stderr in one line."""
    path = str(path)
    if path not in _UNREADABLE:
        _UNREADABLE[path] = reason
        print(f"image skipped: {reason}", file=sys.stderr, flush=True)


def unreadable_images() -> dict[str, str]:
    """{path: reason} of every file skipped since the last `forget_unreadable()`."""
    return dict(_UNREADABLE)


def forget_unreadable() -> None:
    _UNREADABLE.clear()


# ------------------------------------------------------------------------------- folder listing


def rgb_to_uint8_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def image_files(folder: str | os.PathLike, flag: str = "folder") -> list[Path]:
    """Sorted image files of `folder`; an error naming `flag` if there are none."""
    files = list_images(folder)
    if not files:
        raise ValueError(f"{flag} {folder}: no image files found")
    return files


def match_by_name(reference: Sequence[Path], other_folder: str | os.PathLike, flag: str) -> list[Path]:
    """Files of `other_folder` with the same names as `reference`, in the same order.

    The folders must hold exactly the same names; the error lists the first differences.
    """
    others = {path.name: path for path in image_files(other_folder, flag)}
    names = [path.name for path in reference]
    only_reference = sorted(set(names) - set(others))
    only_other = sorted(set(others) - set(names))
    if only_reference or only_other:
        parts = []
        if only_reference:
            parts.append(
                f"{len(only_reference)} restored file(s) not in {flag}: "
                + ", ".join(only_reference[:MAX_LISTED_DIFFERENCES])
            )
        if only_other:
            parts.append(
                f"{len(only_other)} file(s) of {flag} not among the restored images: "
                + ", ".join(only_other[:MAX_LISTED_DIFFERENCES])
            )
        raise ValueError(f"file names differ between --rec_path and {flag} ({'; '.join(parts)})")
    return [others[name] for name in names]


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as the pixels are read (EXIF orientation applied), from the file header
    (`utils.images.displayed_size`), remembered per file version.

    ImageReadError when the header cannot be read or claims more pixels than the decompression-bomb
    limit that `utils.images.read_rgb` applies.
    """
    path = Path(path)
    try:
        status = path.stat()
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read image ({error.__class__.__name__}: {error})") from None
    key = (str(path), status.st_mtime_ns, status.st_size)
    if key not in _SIZES:
        _SIZES[key] = displayed_size(path)
    return _SIZES[key]


def readable_sizes(files: Sequence[Path]) -> list[tuple[int, int] | None]:
    """Header size of each file, None (and a note) for the ones that cannot be read."""
    sizes = []
    for path in files:
        try:
            sizes.append(image_size(path))
        except ImageReadError as error:
            note_unreadable(path, str(error))
            sizes.append(None)
    return sizes


def readable_files(files: Sequence[Path]) -> tuple[list[Path], bool]:
    """The files whose header reads, and whether they all have one size."""
    sizes = readable_sizes(files)
    kept = [path for path, size in zip(files, sizes) if size is not None]
    return kept, len({size for size in sizes if size is not None}) <= 1


def check_sizes(*file_lists: Sequence[Path]) -> bool:
    """Check that the i-th files of all lists have the same size; return whether all sizes are equal.

    An error names the first pair of files whose sizes differ.
    """
    sizes = [[image_size(path) for path in files] for files in file_lists]
    for files, these_sizes in zip(file_lists[1:], sizes[1:]):
        for first, other, size_a, size_b in zip(file_lists[0], files, sizes[0], these_sizes):
            if size_a != size_b:
                raise ValueError(
                    f"image sizes differ: {first} is {size_a[0]}x{size_a[1]}, "
                    f"{other} is {size_b[0]}x{size_b[1]}"
                )
    return len({size for these in sizes for size in these}) <= 1


@dataclass
class Pairs:
    """Same-named restored / other files whose headers both read, and whether all sizes are equal."""

    rec: list[Path]
    other: list[Path]
    same_size: bool

    def __iter__(self):
        return iter((self.rec, self.other, self.same_size))


def paired_files(
    rec_dir: str | os.PathLike, other_dir: str | os.PathLike, flag: str = "--gt_path"
) -> Pairs:
    """Restored files and the same-named files of `other_dir` (names must match exactly).

    A pair with an unreadable file is left out (and noted); the sizes of the remaining pairs must
    match, else a ValueError names the first pair that differs.
    """
    rec_files = image_files(rec_dir, "--rec_path")
    other_files = match_by_name(rec_files, other_dir, flag)
    rec_sizes, other_sizes = readable_sizes(rec_files), readable_sizes(other_files)
    rec, other, sizes = [], [], set()
    for rec_path, other_path, rec_size, other_size in zip(rec_files, other_files, rec_sizes, other_sizes):
        if rec_size is None or other_size is None:
            continue
        if rec_size != other_size:
            raise ValueError(
                f"image sizes differ: {rec_path} is {rec_size[0]}x{rec_size[1]}, "
                f"{other_path} is {other_size[0]}x{other_size[1]}"
            )
        rec.append(rec_path)
        other.append(other_path)
        sizes.add(rec_size)
    return Pairs(rec, other, len(sizes) <= 1)


# ------------------------------------------------------------------------------------- loading


class ImageListDataset(Dataset):
    """uint8 (3, H, W) tensors of `files`, or `transform(reader(path))` when a transform is given.

    A file the reader cannot decode (ImageReadError) comes out as `Unreadable`, which `batches` drops.
    """

    def __init__(
        self,
        files: Sequence[Path],
        transform: Callable[[np.ndarray], object] | None = None,
        reader: Callable[[Path], np.ndarray] = read_rgb,
    ):
        self.files = list(files)
        self.transform = transform
        self.reader = reader

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = self.files[index]
        try:
            image = self.reader(path)
        except ImageReadError as error:
            return Unreadable(str(path), str(error))
        return rgb_to_uint8_tensor(image) if self.transform is None else self.transform(image)


class PairDataset(Dataset):
    """(transform(a), transform(b)) for two aligned lists of files; `Unreadable` if either fails."""

    def __init__(
        self,
        files_a: Sequence[Path],
        files_b: Sequence[Path],
        transform: Callable[[np.ndarray], object] | None = None,
        reader: Callable[[Path], np.ndarray] = read_rgb,
    ):
        self.a = ImageListDataset(files_a, transform, reader)
        self.b = ImageListDataset(files_b, transform, reader)

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, index: int):
        a, b = self.a[index], self.b[index]
        for item in (a, b):
            if isinstance(item, Unreadable):
                return item
        return a, b


def collate_readable(items: list, stack: bool = True) -> tuple[object, list[Unreadable]]:
    """(the readable items, stacked or as a list (None when there are none), the unreadable ones)."""
    failed = [item for item in items if isinstance(item, Unreadable)]
    kept = [item for item in items if not isinstance(item, Unreadable)]
    if not kept:
        return None, failed
    return (default_collate(kept) if stack else kept), failed


def batches(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    same_size: bool = True,
    desc: str = "",
    stack: bool = True,
) -> Iterator:
    """Iterate over `dataset` in order with a progress bar, leaving out (and noting) unreadable files.

    Batches are stacked, one image at a time if sizes vary; with `stack=False` each batch is a list.
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size if (same_size or not stack) else 1,
        shuffle=False,
        num_workers=num_workers,
        drop_last=False,
        collate_fn=functools.partial(collate_readable, stack=stack),
    )
    for batch, failed in tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
        for item in failed:
            note_unreadable(item.path, item.reason)
        if batch is not None:
            yield batch


def pair_batches(
    pairs: Pairs,
    *,
    device: str | torch.device,
    batch_size: int,
    num_workers: int,
    desc: str,
    transform: Callable[[np.ndarray], object] | None = None,
    reader: Callable[[Path], np.ndarray] = read_rgb,
) -> Iterator[tuple]:
    """(restored, other) batches of the readable pairs on `device`, in order.

    Without a `transform` they are uint8 (B, 3, H, W), one pair at a time when sizes vary; a transform
    must give every image one size and may return a tensor or a dict of tensors.
    """
    dataset = PairDataset(pairs.rec, pairs.other, transform, reader)
    same_size = pairs.same_size or transform is not None
    for rec, other in batches(dataset, batch_size, num_workers, same_size, desc):
        yield _to_device(rec, device), _to_device(other, device)


def _to_device(batch, device: str | torch.device):
    if isinstance(batch, dict):
        return {name: value.to(device) for name, value in batch.items()}
    return batch.to(device)


def mean_over_pairs(
    pairs: Pairs,
    per_batch: Callable[[object, object], dict[str, torch.Tensor]],
    *,
    device: str | torch.device,
    batch_size: int,
    num_workers: int,
    desc: str,
    transform: Callable[[np.ndarray], object] | None = None,
) -> dict[str, float]:
    """Mean over all readable pairs of the per-image values that `per_batch(rec, other)` returns.

    `pairs` is what `paired_files` returned; `per_batch` gets the batches of `pair_batches` (uint8
    (B, 3, H, W) on `device` unless a `transform` is given) and returns {name: (B,) tensor}.
    """
    sums: dict[str, float] = {}
    count = 0
    loading = dict(device=device, batch_size=batch_size, num_workers=num_workers, desc=desc)
    for rec, other in pair_batches(pairs, transform=transform, **loading):
        values = per_batch(rec, other)
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value.sum().item()
        count += len(next(iter(values.values())))
    if count == 0:
        raise MetricUnavailable("no readable image pairs")
    return {name: total / count for name, total in sums.items()}
