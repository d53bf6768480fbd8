"""Image folders as the metrics see them: matched file names, checked sizes, batched loading.

Images are read with `utils.images.read_rgb`, so gray, RGBA, palette and 16-bit files become 8-bit
RGB and non-image files are ignored. Datasets yield uint8 tensors (3, H, W), the format
torch-fidelity expects; a `transform` may turn the RGB array into something else first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils.images import ImageReadError, list_images, read_rgb

MAX_LISTED_DIFFERENCES = 5


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


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: cannot read image ({error.__class__.__name__}: {error})") from None


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


class ImageListDataset(Dataset):
    """uint8 (3, H, W) tensors of `files`, or `transform(rgb_array)` when a transform is given."""

    def __init__(self, files: Sequence[Path], transform: Callable[[np.ndarray], object] | None = None):
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        rgb = read_rgb(self.files[index])
        return rgb_to_uint8_tensor(rgb) if self.transform is None else self.transform(rgb)


class PairDataset(Dataset):
    """(transform(a), transform(b)) for two aligned lists of files."""

    def __init__(
        self,
        files_a: Sequence[Path],
        files_b: Sequence[Path],
        transform: Callable[[np.ndarray], object] | None = None,
    ):
        self.a = ImageListDataset(files_a, transform)
        self.b = ImageListDataset(files_b, transform)

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, index: int):
        return self.a[index], self.b[index]


def batches(
    dataset: Dataset, batch_size: int, num_workers: int, same_size: bool = True, desc: str = ""
) -> Iterator:
    """Iterate over `dataset` in order with a progress bar; one image at a time if sizes vary."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size if same_size else 1,
        shuffle=False,
        num_workers=num_workers,
        drop_last=False,
    )
    yield from tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def paired_files(
    rec_dir: str | os.PathLike, other_dir: str | os.PathLike, flag: str = "--gt_path"
) -> tuple[list[Path], list[Path], bool]:
    """Restored files, the same-named files of `other_dir`, and whether all sizes are equal."""
    rec_files = image_files(rec_dir, "--rec_path")
    other_files = match_by_name(rec_files, other_dir, flag)
    same_size = check_sizes(rec_files, other_files)
    return rec_files, other_files, same_size


def mean_over_pairs(
    pairs: tuple[list[Path], list[Path], bool],
    per_batch: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    *,
    device: str | torch.device,
    batch_size: int,
    num_workers: int,
    desc: str,
) -> dict[str, float]:
    """Mean over all pairs of the per-image values that `per_batch(rec, other)` returns.

    `pairs` is what `paired_files` returned; `per_batch` gets uint8 (B, 3, H, W) batches on `device`
    and returns {name: (B,) tensor}.
    """
    rec_files, other_files, same_size = pairs
    sums: dict[str, float] = {}
    for rec, other in batches(PairDataset(rec_files, other_files), batch_size, num_workers, same_size, desc):
        for name, values in per_batch(rec.to(device), other.to(device)).items():
            sums[name] = sums.get(name, 0.0) + values.sum().item()
    return {name: total / len(rec_files) for name, total in sums.items()}
