"""Reading messy image files and writing outputs safely.

Every program in this project reads images through `read_rgb` (or `read_image` where an alpha channel
matters), lists folders through `list_images` and takes its inputs through `collect_inputs`, so that these
behave the same everywhere:

* the EXIF orientation tag is applied (phone portraits come out upright), and outputs are written in
  that displayed orientation; `displayed_size` reads a file's size the same way, from its header;
* gray, palette, RGBA, 16-bit and float files become 8-bit RGB, using the file's declared bit depth
  (a dark 16-bit image stays dark);
* a file that cannot be decoded, or whose header claims more pixels than Pillow's decompression-bomb
  limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 pixels by default; set ``PMRF_MAX_IMAGE_PIXELS``
  to change it, 0 for none), raises `ImageReadError` naming it, which programs turn into a listed skip;
* outputs are written atomically (`write_atomic`) with the permissions the user's umask gives, and
  rounded as torchvision's ``save_image`` rounds: ``floor(255·v + 0.5)``, JPEG at quality 75 unless
  asked otherwise;
* outputs are named by one rule in every mode (`output_stems`): inputs whose outputs would share a file
  name get distinct stems, and nothing that becomes part of a name may hold a path (`check_name_part`);
* a run's inputs are listed (`collect_inputs`), its output folders kept off the inputs
  (`refuse_writing_into_inputs`) and made writable (`writable_folder`) by one rule each, which raise
  `InputError` (one line naming the path and the option) for the program to print;
* SIGTERM stops a run as Ctrl-C does inside `terminate_as_interrupt` (its handler: `raise_interrupt`),
  and a run stopped after whole files raises `RunInterrupted`, whose message says how many.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import tempfile
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm")  # restored by whole_image (--whole_image)
JPEG_QUALITY = 75  # what torchvision's save_image (and so the reference) writes
if os.environ.get("PMRF_MAX_IMAGE_PIXELS"):
    Image.MAX_IMAGE_PIXELS = int(os.environ["PMRF_MAX_IMAGE_PIXELS"]) or None
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # the EXIF orientations that swap width and height
_BIT_DEPTH_OF_MODE = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I;16S": 16}


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded; the message names the file."""


class ImageTooLargeError(ImageReadError):
    """An image file declares more pixels than the decompression-bomb limit (`pixels`, when known)."""

    def __init__(self, message: str, pixels: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.pixels, self.limit = pixels, limit


class InputError(ValueError):
    """What a run was given cannot be used (nothing to restore, an output folder among the inputs or not
    writable); the message is the one line a program prints, naming the path and the option."""


def _is_file_with(path: str | os.PathLike, extensions: tuple[str, ...]) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in extensions and not path.name.startswith(".")


def is_image_file(path: str | os.PathLike) -> bool:
    return _is_file_with(path, IMAGE_EXTENSIONS)


def is_video_file(path: str | os.PathLike) -> bool:
    return _is_file_with(path, VIDEO_EXTENSIONS)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; sub-folders and other files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def collect_inputs(path: str | os.PathLike, videos: bool = False, option: str = "--lq_data_path") -> list[Path]:
    """The files a run restores: `path` itself when it is an image (with `videos`, also a video), else the
    images (and videos) directly inside the folder `path`, sorted by name. InputError naming `option` and
    `path` when it is something else, does not exist or holds nothing to restore."""
    path = Path(path)
    extensions = IMAGE_EXTENSIONS + (VIDEO_EXTENSIONS if videos else ())
    if path.is_file():
        if _is_file_with(path, extensions):
            return [path]
        if is_video_file(path):
            raise InputError(f"{option} {path}: a video: add --whole_image to restore its faces")
        known = ", ".join(extension.lstrip(".") for extension in extensions)
        kind = "an image or a video" if videos else "an image file"
        raise InputError(f"{option} {path}: not {kind} (known extensions: {known})")
    if not path.is_dir():
        raise InputError(f"{option} {path}: no such file or folder")
    try:
        found = sorted((p for p in path.iterdir() if _is_file_with(p, extensions)), key=lambda p: p.name)
    except OSError as error:
        raise InputError(f"{option} {path}: cannot list this folder ({error.strerror or error})") from None
    if not found:
        raise InputError(f"{option} {path}: no {'images or videos' if videos else 'images'} in this folder")
    return found


def refuse_writing_into_inputs(
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    folders: Sequence[str] = ("",),
    what: str = "inputs",
    option: str = "--output_dir",
) -> None:
    """InputError, before any work, when one of the folders a run writes (`output_dir/<folder>`) holds
    some of `inputs`: no output may land on an input."""
    input_folders = {Path(path).parent.resolve() for path in inputs}
    for folder in folders:
        target = Path(output_dir) / folder
        if target.resolve() in input_folders:
            raise InputError(
                f"output folder {target} is the input folder (it holds the {what}); choose another {option}"
            )


def writable_folder(folder: str | os.PathLike, option: str = "--output_dir") -> Path:
    """`folder`, created if needed, once a file could be written in it (checked before any compute).
    InputError naming `option` for a read-only folder, a file in its place or a parent that cannot be made."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder}: a file is in the way; choose a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".pmrf-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise InputError(
            f"{option} {folder}: cannot write there ({error.strerror or error}); choose a writable folder"
        ) from None
    return folder


def _declared_bit_depth(image: Image.Image) -> int:
    """Bits per sample that the file declares for an integer image ('I;16' modes, 16-bit PNGs)."""
    if image.mode in _BIT_DEPTH_OF_MODE:
        return 16
    if image.format == "PNG" and image.mode == "I":  # older Pillow opens 16-bit gray PNGs as 'I'
        return 16
    return 32 if image.mode == "I" else 8


def _to_uint8(array: np.ndarray, bits: int = 8) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = float(2**bits - 1)
        return np.clip(np.floor(array.astype(np.float64) * 255.0 / top + 0.5), 0, 255).astype(np.uint8)
    array = np.nan_to_num(array.astype(np.float64))
    return np.clip(np.floor(array * 255.0 + 0.5), 0, 255).astype(np.uint8)  # float images are in [0, 1]


@contextmanager
def _reading(path: Path):
    """Turn whatever opening or decoding `path` raises into one ImageReadError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise ImageTooLargeError(
            f"{path}: skipped: {error} (the limit guards against decompression bombs; set "
            "PMRF_MAX_IMAGE_PIXELS to a larger number of pixels for a trusted file)",
            pixels=int(found.group(1)) if found else None,
            limit=Image.MAX_IMAGE_PIXELS,
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError) as error:
        raise ImageReadError(f"{path}: cannot read image ({error.__class__.__name__}: {error})") from None


def _open(path: Path) -> Image.Image:
    """Decode the whole file (first frame), upright; ImageReadError for anything that goes wrong."""
    with _reading(path), Image.open(path) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
        upright.format = image.format
        return upright


def displayed_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of the image as `read_image` returns it, upright (EXIF orientation applied), from
    the header alone. ImageReadError as `read_image` raises it for an unreadable header or one claiming
    more pixels than the decompression-bomb limit. Every size check goes through this, so sizes are
    compared the way pixels are read."""
    path = Path(path)
    with _reading(path), Image.open(path) as image:
        width, height = image.size
        if image.format == "PNG" and not _png_metadata_after_pixels(path):
            exif = Image.Image.getexif(image)  # all metadata is in the header: skip PNG's decode-to-the-end
        else:
            exif = image.getexif()
        orientation = exif.get(EXIF_ORIENTATION, 1)
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)


def _png_metadata_after_pixels(path: Path) -> bool:
    """Whether a PNG holds EXIF or text chunks after its pixel data, which Pillow finds only by decoding
    the image (walks the chunk headers). A file cut short has none that matter: `read_rgb` refuses it."""
    with open(path, "rb") as file:
        file.seek(8)
        pixels_seen = False
        while True:
            header = file.read(8)
            if len(header) < 8:
                return False
            length, kind = struct.unpack(">I4s", header)
            if kind == b"IEND":
                return False
            if kind == b"IDAT":
                pixels_seen = True
            elif pixels_seen and kind in (b"eXIf", b"tEXt", b"zTXt", b"iTXt"):
                return True
            file.seek(length + 4, os.SEEK_CUR)  # the data and its CRC


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Any supported image as 8-bit (H, W, 3) RGB, or (H, W, 4) RGBA when the file has transparency."""
    path = Path(path)
    image = _open(path)
    if image.mode in ("P", "PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA" if "A" in image.mode or "a" in image.mode or "transparency" in image.info else "RGB")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        array = _to_uint8(np.asarray(image), _declared_bit_depth(image))
    elif image.mode in ("RGB", "L", "RGBA", "1"):
        array = _to_uint8(np.asarray(image))
    else:  # CMYK, YCbCr, LAB, HSV...
        array = np.asarray(image.convert("RGB"))
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Any supported image as an 8-bit RGB array (H, W, 3), upright; alpha is dropped (faces are opaque)."""
    array = read_image(path)
    return np.ascontiguousarray(array[:, :, :3]) if array.shape[2] == 4 else array


def is_gray(image: np.ndarray, tolerance: int = 2) -> bool:
    """True when the three colour channels of an (H, W, 3+) uint8 image are (nearly) equal."""
    rgb = image[:, :, :3].astype(np.int16)
    return bool(np.abs(rgb[:, :, 0] - rgb[:, :, 1]).max(initial=0) <= tolerance
                and np.abs(rgb[:, :, 1] - rgb[:, :, 2]).max(initial=0) <= tolerance)


# ------------------------------------------------------------------------------------------- writing


def _read_umask() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # read it by setting it (once, at import, before any thread starts)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()


def write_atomic(path: str | os.PathLike, write_to) -> Path:
    """Call `write_to(tmp_path)` and move the result to `path` in one step.

    An interrupted run never leaves a half-written file under the final name. The file gets the
    permissions a plain ``open(path, 'w')`` would (0644 under umask 022).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".part", dir=path.parent)
    os.close(fd)
    try:
        write_to(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def output_name(name: str, suffix: str | None = None, ext: str = "auto") -> str:
    """The file name of an output made from input `name`: `stem[_suffix].ext` (ext 'auto' keeps the input's,
    except that GIF inputs give PNG outputs)."""
    path = Path(name)
    stem = f"{path.stem}_{suffix}" if suffix else path.stem
    extension = path.suffix if ext == "auto" else f".{ext.lstrip('.')}"
    if extension.lower() == ".gif":
        extension = ".png"  # a GIF holds 256 colours at most: a restoration is written losslessly instead
    return stem + extension


def check_name_part(text: str) -> str:
    """`text` if it can become part of a file name (a --suffix): no path separator, no '..', no control
    character, so that no output can land outside its folder; ValueError otherwise."""
    separators = {"/", "\\", os.sep, os.altsep or "/"}
    if not text or any(sep in text for sep in separators) or ".." in text or any(ord(c) < 32 for c in text):
        raise ValueError(f"{text!r} cannot be part of a file name (no '/', '\\', '..' or control characters)")
    return text


def output_stems(names: Sequence[str], ext: str = "auto") -> dict[str, str]:
    """The stem that names each input's outputs: its own, unless two inputs would give the same output
    file. Then each of them gets ``<stem>_<its extension>`` (anim.gif, anim.png -> anim_gif, anim_png),
    with ``_2``, ``_3``... added, in sorted order, while that is taken too (x.PNG, x.png -> x_png,
    x_png_2). Inputs whose name is unique keep it.

    Names that differ only in case clash (macOS and Windows file systems ignore case). `ext` is the
    outputs' extension as `output_name` takes it: 'png' or 'jpg' for all outputs (pass 'png' when a mode
    writes PNG files per input whatever --ext says), or 'auto' for each input's own (GIF gives PNG). The
    same names always give the same stems, so a rerun finds its outputs (--skip_existing). Every mode
    (aligned faces, whole photos, ...) names its outputs through this function.
    """

    def key(stem: str, name: str) -> tuple[str, str]:
        return stem.casefold(), Path(output_name(name, None, ext)).suffix.casefold()

    counts = Counter(key(Path(name).stem, name) for name in names)
    stems = {name: Path(name).stem for name in names if counts[key(Path(name).stem, name)] == 1}
    taken = {key(stem, name) for name, stem in stems.items()}
    for name in sorted(set(names) - set(stems)):
        base = f"{Path(name).stem}_{Path(name).suffix.lstrip('.').lower()}"
        stem, number = base, 1
        while key(stem, name) in taken:
            number += 1
            stem = f"{base}_{number}"
        taken.add(key(stem, name))
        stems[name] = stem
    return stems


def renamed_outputs(stems: Mapping[str, str]) -> dict[str, str]:
    """The inputs of `output_stems` whose outputs do not carry their own stem: name -> stem."""
    return {name: stem for name, stem in sorted(stems.items()) if stem != Path(name).stem}


def print_renamed(renamed: Mapping[str, str], what: str) -> None:
    """The note every mode prints about the inputs whose outputs were renamed (`renamed`: input name ->
    output stem or file name): `note: N <what>; their outputs are named:`, then one
    `  <input> -> <output>` line per input; nothing when none was renamed."""
    if renamed:
        print(f"note: {len(renamed)} {what}; their outputs are named:")
        for name, output in renamed.items():
            print(f"  {name} -> {output}")


def save_rgb(array: np.ndarray, path: str | os.PathLike, jpeg_quality: int = JPEG_QUALITY) -> Path:
    """Write an (H, W, 3) RGB or (H, W, 4) RGBA uint8 array atomically; the format follows the extension."""
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: expected a uint8 array, got {array.dtype}")
    image = Image.fromarray(array)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension")
    if image.mode == "RGBA" and fmt in ("JPEG", "BMP"):
        image = image.convert("RGB")  # these formats have no alpha channel
    options = {"quality": int(jpeg_quality)} if fmt == "JPEG" else {}
    return write_atomic(path, lambda tmp: image.save(tmp, format=fmt, **options))


def tensor_to_uint8(tensor) -> np.ndarray:
    """(C, H, W) or (N, C, H, W) float tensor in [0, 1] -> (H, W, 3) or (N, H, W, 3) uint8, rounded as
    torchvision's save_image does (``floor(255·v + 0.5)``); one channel is replicated to three. The one
    float-to-uint8 rule of the project (images, faces, panels)."""
    array = tensor.detach().float().mul(255).add_(0.5).clamp_(0, 255).to("cpu", dtype=torch.uint8).numpy()
    array = np.moveaxis(array, -3, -1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array)


class WriteError(OSError):
    """Writing an output failed (full disk, permissions...); the message says how many were written."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a run after its finished outputs were written whole; the message is
    the one line to print (how many were written, how to finish)."""


def raise_interrupt(signum, frame) -> None:
    """Signal handler that raises KeyboardInterrupt: the signal (SIGTERM) ends the work as Ctrl-C does."""
    raise KeyboardInterrupt


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a job scheduler) handled as Ctrl-C inside the block, so a run stops after whole
    files and leaves no partial one; the previous handler is back afterwards, so blocks may nest. In the
    main thread only (Python delivers signals there); elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ImageWriter:
    """Encodes and writes images on background threads, so the GPU never waits on a file.

    `submit(image, path)` takes a CPU tensor (C, H, W) in [0, 1] or a uint8 array; at most
    `max_pending` writes are in flight. The first failure is raised (as `WriteError`) by the next
    `submit` or by `close`, with the number of images written before it.
    """

    def __init__(self, jpeg_quality: int = JPEG_QUALITY, workers: int = 2, max_pending: int = 256):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.jpeg_quality = jpeg_quality
        self.max_pending = max_pending
        self.written = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-writer")
        self._pending: deque = deque()

    def _write(self, image, path: Path) -> Path:
        array = image if isinstance(image, np.ndarray) else tensor_to_uint8(image)
        try:
            return save_rgb(array, path, self.jpeg_quality)
        except OSError as error:
            raise WriteError(
                f"cannot write {path}: {error.strerror or error} (check the disk space and permissions)"
            ) from None

    def _collect(self, wait_for: int) -> None:
        """Collect finished writes from the oldest on; wait until at most `wait_for` are in flight."""
        while self._pending and (len(self._pending) > wait_for or self._pending[0].done()):
            future = self._pending.popleft()
            try:
                future.result()
            except WriteError as error:
                self.abort()
                raise WriteError(f"{error}; {self.written} image(s) were written before this") from None
            self.written += 1

    def abort(self) -> None:
        """Drop the writes not started; wait for those under way (each ends as a whole file or none) and
        count the ones that succeeded."""
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
        self.written += sum(1 for f in self._pending if not f.cancelled() and f.exception() is None)
        self._pending.clear()

    def submit(self, image, path: str | os.PathLike) -> None:
        self._collect(self.max_pending - 1)
        self._pending.append(self._pool.submit(self._write, image, Path(path)))

    def close(self) -> int:
        """Wait for every write; returns how many images were written."""
        try:
            self._collect(0)
        finally:
            self._pool.shutdown(wait=True)
        return self.written

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
