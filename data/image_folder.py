"""A folder of clean images degraded on the fly (training, validation, test) or of inputs (inference)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor
from tqdm import tqdm

from utils.images import IMAGE_EXTENSIONS, ImageReadError, list_images, read_rgb

from .transforms import Transform

DegradationFn = Callable[[Tensor], "tuple[Tensor, Tensor | None]"]
MAX_LISTED_DIFFERENCES = 5
MAX_LISTED_BAD_IMAGES = 20


class ImageFolderDataset(Dataset):
    """Items are dicts: `x` (3, H, W) float in [0, 1], `y` (the degradation of x), `img_file_name`,
    and `non_noisy_z0` (the image of the same name in `source_samples_root`) when that folder is given.

    Images are the image files directly inside `root`, sorted by name; other files and sub-folders are
    ignored. Each one is read as 8-bit RGB, passed to `transform` as a PIL image (default: to tensor
    only), then to `degradation`, which returns `(y, x_override)`; a non-None `x_override` replaces x.
    `degradation=None` is the identity (y = x), as inference uses it.

    `on_error="raise"` (training): an unreadable image raises `ImageReadError` naming it when it is
    loaded. `on_error="skip"` (inference): every file is decoded once here, unreadable ones are left
    out and listed in `self.skipped` as (path, reason), so a DataLoader only ever sees good images.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        degradation: DegradationFn | None = None,
        transform: Transform | None = None,
        source_samples_root: str | os.PathLike | None = None,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(root)
        self.degradation = degradation
        self.transform = transform
        self.on_error = on_error
        self.skipped: list[tuple[Path, str]] = []

        self.image_paths = list_nonempty(self.root)
        self.source_paths: list[Path] | None = None
        if source_samples_root is not None:
            self.source_paths = list_nonempty(Path(source_samples_root))
            check_same_names(self.image_paths, self.source_paths)
        if on_error == "skip":
            self._drop_unreadable()

    @property
    def img_file_names(self) -> list[str]:
        return [path.name for path in self.image_paths]

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Tensor | str]:
        image_path = self.image_paths[index]
        with torch.no_grad():
            x = self.load(image_path)
            y, x_override = (x, None) if self.degradation is None else self.degradation(x)
            item: dict[str, Tensor | str] = {
                "x": x if x_override is None else x_override,
                "y": y,
                "img_file_name": image_path.name,
            }
            if self.source_paths is not None:
                item["non_noisy_z0"] = self.load(self.source_paths[index])
        return item

    def load(self, path: Path) -> Tensor:
        """Read one file as RGB and apply the transform: a float tensor (3, H, W)."""
        image = Image.fromarray(read_rgb(path))
        tensor = (self.transform or to_tensor)(image)
        if not isinstance(tensor, Tensor) or tensor.ndim != 3 or tensor.shape[0] != 3:
            raise TypeError(f"{path}: the transform must return a (3, H, W) tensor, got {describe(tensor)}")
        return tensor

    def scan(self, img_size: int | None = None, num_workers: int = 0) -> list[tuple[Path, str]]:
        """Decode every image (and source sample) once; (path, reason) of those a batch cannot use:
        unreadable files and, when `img_size` is given, images that are not square (after resizing the
        shorter side to `img_size` they would not stack into a batch)."""
        from torch.utils.data import DataLoader

        checker = _ImageChecker(self.image_paths, self.source_paths)
        loader = DataLoader(checker, batch_size=None, num_workers=num_workers)
        problems = []
        for index, reason in tqdm(loader, total=len(checker), desc=f"checking {self.root}", unit="img", disable=None):
            if reason is not None:
                problems.append((self.image_paths[index], reason))
        return problems

    def drop(self, paths: list[Path]) -> None:
        """Leave these images (and their source samples) out."""
        dropped = set(paths)
        keep = [i for i, path in enumerate(self.image_paths) if path not in dropped]
        if not keep:
            raise ValueError(f"{self.root}: no usable image left")
        self.image_paths = [self.image_paths[i] for i in keep]
        if self.source_paths is not None:
            self.source_paths = [self.source_paths[i] for i in keep]

    def _drop_unreadable(self) -> None:
        pairs = list(zip(self.image_paths, self.source_paths or [None] * len(self.image_paths)))
        kept = []
        for image_path, source_path in tqdm(pairs, desc=f"checking {self.root}", unit="img", disable=None):
            reason = unreadable_reason(image_path) or (source_path and unreadable_reason(source_path))
            if reason:
                self.skipped.append((image_path, reason))
            else:
                kept.append((image_path, source_path))
        if self.skipped:
            warnings.warn(
                f"{self.root}: skipped {len(self.skipped)} unreadable image(s), first: {self.skipped[0][1]}",
                stacklevel=3,
            )
        if not kept:
            raise ValueError(f"{self.root}: none of the {len(pairs)} image files could be read")
        self.image_paths = [image_path for image_path, _ in kept]
        if self.source_paths is not None:
            self.source_paths = [source_path for _, source_path in kept]


class BadImagesError(ValueError):
    """Images of a folder cannot be used; the message lists them, one a line."""


def scan_images(
    dataset: ImageFolderDataset, img_size: int | None, skip: bool, what: str, num_workers: int = 0,
    task: str = "train",
) -> None:
    """Decode every image of `dataset` once before the first batch; list the unreadable and odd-sized ones.

    Without `skip` this raises BadImagesError with that list (`what` names the folder's option); with it,
    the images are left out of `dataset` and a warning lists them. `task` ('train', 'test') words the
    messages. train.py and test.py both call this, with their --skip_bad_images.
    """
    problems = dataset.scan(img_size, num_workers)
    if not problems:
        return
    listing = "\n".join(f"  {path.name}: {reason}" for path, reason in problems[:MAX_LISTED_BAD_IMAGES])
    if len(problems) > MAX_LISTED_BAD_IMAGES:
        listing += f"\n  ... and {len(problems) - MAX_LISTED_BAD_IMAGES} more"
    if not skip:
        raise BadImagesError(f"{what}: {len(problems)} image(s) cannot be used:\n{listing}\n"
                             f"fix or remove them, or pass --skip_bad_images to {task} without them")
    print(f"warning: {what}: {task}ing without {len(problems)} image(s):\n{listing}")
    dataset.drop([path for path, _ in problems])


class _ImageChecker(Dataset):
    """(index, None or the reason image `index` cannot be used), computed in DataLoader workers."""

    def __init__(self, image_paths: list[Path], source_paths: list[Path] | None):
        self.image_paths, self.source_paths = image_paths, source_paths

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[int, str | None]:
        paths = [self.image_paths[index]] + ([self.source_paths[index]] if self.source_paths else [])
        for path in paths:
            try:
                image = read_rgb(path)
            except ImageReadError as error:
                return index, str(error)
            height, width = image.shape[:2]
            if height != width:
                return index, f"{path}: {width}×{height} is not square; batches need square images"
        return index, None


def list_nonempty(folder: Path) -> list[Path]:
    paths = list_images(folder)
    if not paths:
        raise ValueError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return paths


def check_same_names(image_paths: list[Path], source_paths: list[Path]) -> None:
    image_names = [path.name for path in image_paths]
    source_names = [path.name for path in source_paths]
    if image_names == source_names:
        return
    missing = sorted(set(image_names) - set(source_names))[:MAX_LISTED_DIFFERENCES]
    extra = sorted(set(source_names) - set(image_names))[:MAX_LISTED_DIFFERENCES]
    raise ValueError(
        f"{source_paths[0].parent}: source samples must have the same file names as {image_paths[0].parent}; "
        f"first differences: missing {missing}, unexpected {extra}"
    )


def unreadable_reason(path: Path) -> str | None:
    """None when the whole file decodes, else the error message (which names the file)."""
    try:
        read_rgb(path)
    except ImageReadError as error:
        return str(error)
    return None


def describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__
