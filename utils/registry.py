"""One registry of the named networks and weights files the project knows, and one way to find a file.

Each entry says what a file is, its name on disk, where to get it (a URL or a Hugging Face Hub id), the
folders it is looked for in, and its checksum where known; each named network says the image size it
was trained at. Every program finds a weights file through `find_weights(name, dirs, offline)`:

* it looks in `dirs` (folders the user named, e.g. ``--face_weights_dir`` or ``--metrics_ckpt_dir``; a
  file path is taken as it is), then in the entry's default folders (``checkpoints/…``,
  ``evaluation/metrics_ckpt/``, torch's hub cache); no environment variable names a weights folder (the
  options do);
* a file that is not there is downloaded into the entry's cache folder when the entry has a URL and
  `offline` is false (and checked against its checksum), else it is a `MissingWeightsError` whose one
  line names the file, the folder it goes in and where to get it.

Reading a file found here is `utils.weights`' job (tensors only).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from utils.weights import MissingWeightsError, WeightsReadError

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO_ROOT / "checkpoints"
METRICS_CKPT = REPO_ROOT / "evaluation" / "metrics_ckpt"
HUB_CACHE = "<torch hub cache>"  # torch.hub.get_dir()/checkpoints, resolved when it is used


@dataclass(frozen=True)
class NamedNetwork:
    """A named architecture (arch.configs.NAMED_CONFIGS) and the square image size it was trained at."""

    name: str
    native_size: int


@dataclass(frozen=True)
class WeightsFile:
    """A weights file: what it is, its name, where it comes from and where it is looked for."""

    name: str  # registry key
    what: str  # for messages: "RetinaFace face detector"
    file: str  # file name on disk
    url: str | None = None  # direct download, if there is one
    hub_id: str | None = None  # Hugging Face Hub repository, if the weights live there
    folders: tuple[str | Path, ...] = ()  # where it is looked for, in order (HUB_CACHE: torch's cache)
    sha256_prefix: str | None = None  # leading hex digits of the file's SHA-256, where known
    hint: str = ""  # appended to the "not found" message
    downloads_to: str | Path | None = None  # where a download goes (default: the first folder)


NETWORKS: dict[str, NamedNetwork] = {}
WEIGHTS: dict[str, WeightsFile] = {}


def register_network(name: str, native_size: int) -> NamedNetwork:
    NETWORKS[name] = NamedNetwork(name, native_size)
    return NETWORKS[name]


def register_weights(entry: WeightsFile) -> WeightsFile:
    if entry.name in WEIGHTS:
        raise ValueError(f"weights {entry.name!r} registered twice")
    WEIGHTS[entry.name] = entry
    return entry


def native_size(arch: object) -> int | None:
    """The image size a named architecture was trained at; None for custom configs and unknown names."""
    entry = NETWORKS.get(arch) if isinstance(arch, str) else None
    return entry.native_size if entry else None


# ------------------------------------------------------------------------------------ the entries

register_network("hdit_ImageNet256Sp4", 512)  # the blind-face flow
register_network("swinir_L", 512)  # DifFace's posterior-mean network
register_network("hdit_XL2", 256)  # the controlled experiments
register_network("swinir_M", 256)

FACEXLIB = "https://github.com/xinntao/facexlib/releases/download"
for entry in (
    # the official PMRF models
    WeightsFile("pmrf_blind_face", "official PMRF blind-face model", "blind_face_restoration_pmrf.ckpt",
                hub_id="ohayonguy/PMRF_blind_face_image_restoration", folders=(CHECKPOINTS,),
                hint="; or use --ckpt_path ohayonguy/PMRF_blind_face_image_restoration --ckpt_path_is_huggingface"),
    WeightsFile("swinir_restoration512_L1", "DifFace SwinIR posterior-mean", "swinir_restoration512_L1.pth",
                url="https://github.com/zsyOAOA/DifFace/releases/download/V1.0/swinir_restoration512_L1.pth",
                folders=(CHECKPOINTS,)),
    # whole photos
    WeightsFile("retinaface", "RetinaFace face detector", "detection_Resnet50_Final.pth",
                url=f"{FACEXLIB}/v0.1.0/detection_Resnet50_Final.pth", folders=(CHECKPOINTS / "facexlib",),
                hint="; or use --detector mtcnn, which needs no download"),
    WeightsFile("parsenet", "ParseNet face parsing", "parsing_parsenet.pth",
                url=f"{FACEXLIB}/v0.2.2/parsing_parsenet.pth", folders=(CHECKPOINTS / "facexlib",)),
    WeightsFile("realesrgan_x2plus", "Real-ESRGAN background", "RealESRGAN_x2plus.pth",
                url="https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",
                folders=(CHECKPOINTS / "realesrgan",)),
    # metrics (evaluation and validation)
    WeightsFile("inception", "Inception (FID, KID, IS, precision/recall)", "weights-inception-2015-12-05-6726825d.pth",
                url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                    "weights-inception-2015-12-05-6726825d.pth",
                folders=(METRICS_CKPT, HUB_CACHE), sha256_prefix="6726825d",
                downloads_to=HUB_CACHE),
    WeightsFile("vgg16", "VGG16 (LPIPS)", "vgg16-397923af.pth", url="https://download.pytorch.org/models/vgg16-397923af.pth",
                folders=(METRICS_CKPT, HUB_CACHE), sha256_prefix="397923af", downloads_to=HUB_CACHE),
    WeightsFile("piq_lpips", "piq LPIPS head", "lpips_weights.pt",
                url="https://github.com/photosynthesis-team/photosynthesis.metrics/releases/download/v0.4.0/lpips_weights.pt",
                folders=(METRICS_CKPT, HUB_CACHE), downloads_to=HUB_CACHE),
    WeightsFile("arcface", "ArcFace (Deg)", "resnet18_110.pth", folders=(METRICS_CKPT,),
                hint="; see evaluation/metrics_ckpt/README.md for the source"),
    WeightsFile("awing_fan", "AWing FAN (LMD)", "alignment_WFLW_4HG.pth", url=f"{FACEXLIB}/v0.1.0/alignment_WFLW_4HG.pth",
                folders=(METRICS_CKPT,), hint="; see evaluation/metrics_ckpt/README.md for the source"),
):
    register_weights(entry)


# ------------------------------------------------------------------------------------ finding files


def _folder(folder: str | Path) -> Path:
    if folder == HUB_CACHE:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints"
    return Path(folder).expanduser()


def candidates(name: str, dirs: Iterable[str | os.PathLike | None] = ()) -> list[Path]:
    """Every path `find_weights` looks at for `name`, in order."""
    entry = weights_entry(name)
    places: list[Path] = []
    for where in dirs:
        if where:
            where = Path(where).expanduser()
            places.append(where if where.suffix and not where.is_dir() else where / entry.file)
    places += [_folder(folder) / entry.file for folder in entry.folders]
    return places


def default_path(name: str) -> Path:
    """Where weights file `name` goes when no folder is named: its download folder, else its first folder."""
    entry = weights_entry(name)
    folder = entry.downloads_to or (entry.folders[0] if entry.folders else None)
    return _folder(folder) / entry.file if folder is not None else Path(entry.file)


def weights_entry(name: str) -> WeightsFile:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise KeyError(f"no weights named {name!r}; known: {', '.join(sorted(WEIGHTS))}") from None


def find_weights(name: str, dirs: Iterable[str | os.PathLike | None] = (), offline: bool = True) -> Path:
    """The path of weights file `name` (see the module's docstring), downloaded when allowed."""
    entry = weights_entry(name)
    dirs = [folder for folder in dirs if folder]  # None: the user named no folder
    places = candidates(name, dirs)
    for path in places:
        if path.is_file():
            return path
    target = places[0] if dirs else default_path(name)
    if entry.url and not offline:
        return download(entry, target)
    source = f" (download it from {entry.url})" if entry.url else (f" (from the Hub: {entry.hub_id})" if entry.hub_id else "")
    raise MissingWeightsError(f"{entry.what} weights not found: put {entry.file} at {target.resolve()}{source}{entry.hint}")


def download(entry: WeightsFile, target: Path) -> Path:
    """Download `entry` to `target` (atomically), checking its checksum prefix where known."""
    import torch

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(entry.url, str(target), hash_prefix=entry.sha256_prefix, progress=True)
    except Exception as error:  # offline, proxy, disk, wrong checksum: one line
        target.unlink(missing_ok=True)
        raise MissingWeightsError(
            f"{entry.what} weights not found and their download failed ({error.__class__.__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}): put {entry.file} at {target.resolve()} "
            f"(download it from {entry.url}){entry.hint}"
        ) from None
    return target


def verify(name: str, path: str | os.PathLike) -> None:
    """Raise WeightsReadError when `path`'s SHA-256 does not start with the entry's known prefix."""
    entry = weights_entry(name)
    if not entry.sha256_prefix:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(entry.sha256_prefix):
        raise WeightsReadError(f"{path}: not the expected {entry.what} file (SHA-256 does not start with {entry.sha256_prefix})")
