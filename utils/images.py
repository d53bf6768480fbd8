"""Reading messy image folders and writing outputs safely.

Every program in this project reads images through `read_rgb` and lists folders through
`list_images`, so gray, RGBA, palette and 16-bit files, and stray non-image files, behave the same
everywhere.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded; the message names the file."""


def is_image_file(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; sub-folders and other files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.max(initial=0) > 255 else 255
        return np.clip(np.round(array.astype(np.float64) * 255.0 / top), 0, 255).astype(np.uint8)
    array = array.astype(np.float64)
    if array.max(initial=0.0) > 1.0:  # float images stored on the 0-255 scale
        array = array / 255.0
    return np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Load any supported image as an 8-bit RGB array of shape (H, W, 3).

    Gray is replicated, alpha is dropped (faces are opaque),
    palettes are expanded and 16-bit or float data is rescaled to 8 bits.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P" or image.mode == "PA":
                image = image.convert("RGBA")
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                array = _to_uint8(np.asarray(image))
            elif image.mode in ("RGB", "L", "RGBA", "LA"):
                array = np.asarray(image)
            else:
                array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: cannot read image ({error.__class__.__name__}: {error})") from None
    array = _to_uint8(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 2:  # gray + alpha
        array = np.repeat(array[:, :, :1], 3, axis=2)
    elif array.shape[2] >= 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def write_atomic(path: str | os.PathLike, write_to) -> Path:
    """Call `write_to(tmp_path)` and move the result to `path` in one step.

    An interrupted run never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write_to(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_rgb(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 RGB array atomically; the format follows the file extension."""
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: expected a uint8 array, got {array.dtype}")
    image = Image.fromarray(array)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension")
    options = {"quality": 95} if fmt == "JPEG" else {}  # outputs keep the input's name; keep JPEGs close
    return write_atomic(path, lambda tmp: image.save(tmp, format=fmt, **options))


def tensor_to_uint8(tensor) -> np.ndarray:
    """(3, H, W) or (1, H, W) float tensor in [0, 1] -> (H, W, 3) uint8 array (rounded)."""
    array = tensor.detach().float().clamp(0, 1).mul(255).round().to("cpu").numpy().astype(np.uint8)
    array = np.transpose(array, (1, 2, 0))
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array
