"""Plain code shared by the test modules: tiny networks, methods built from the registry, stand-in
networks and detectors with known answers, files, and the programs run as a user runs them.

Fixtures live in conftest.py; this module holds what tests call or import. No test module imports
another test module: what two of them share is here (see conftest.py's docstring).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image
from torch import nn

from lightning_models.mmse_rectified_flow import MMSERectifiedFlow
from lightning_models.pmrf import METHODS, Method

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_DIRS = [Path(__file__).resolve().parent / "data" / "checkpoint_keys"]

# ------------------------------------------------------------------------------------ tiny networks

TINY_HDIT = {
    "type": "hdit",
    "patch_size": [2, 2],
    "widths": [16, 32],
    "depths": [1, 1],
    "self_attns": [
        {"type": "neighborhood", "d_head": 8, "kernel_size": 3},
        {"type": "global", "d_head": 8},
    ],
    "mapping_width": 16,
    "mapping_depth": 1,
}

TINY_SWINIR = {
    "type": "swinir",
    "embed_dim": 12,
    "depths": [2],
    "num_heads": [2],
    "window_size": 4,
    "sf": 2,
    "img_size": 8,
}


def load_manifest(name: str) -> dict:
    """A manifest of the official checkpoints' state-dict keys and shapes (copied from the project spec)."""
    for folder in MANIFEST_DIRS:
        path = folder / name
        if path.is_file():
            return json.loads(path.read_text())
    raise FileNotFoundError(f"{name} not found in {[str(p) for p in MANIFEST_DIRS]}")


def manifest_network(entry: str) -> nn.Module:
    """The network of a manifest entry: `name+condN` (N condition channels), `name+inN` (N input channels)."""
    from arch import NAMED_CONFIGS, create_arch

    name, suffix = entry.split("+")
    if suffix.startswith("cond"):
        return create_arch(name, int(suffix[4:]))
    if suffix.startswith("in"):  # a network whose input has this many channels
        return create_arch({**NAMED_CONFIGS[name], "in_channels": int(suffix[2:])})
    raise AssertionError(f"unknown manifest entry {entry}")


def randomize_(module: nn.Module, scale: float = 0.1, generator: torch.Generator | None = None) -> nn.Module:
    """Add scale·N(0, 1) to every parameter, in place, so that zero-initialised layers (HDiT's output
    projection) carry signal."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype, device=p.device) * scale)
    return module


# ------------------------------------------------------------------------ methods, from the registry

# The registered methods that integrate a flow (every row of pmrf.METHODS with a source z0).
FLOW_METHODS = [name for name, method in METHODS.items() if method.source is not None]


def method_arguments(name: str, posterior_mean: Path | Mapping | None = None) -> dict:
    """MMSERectifiedFlow's arguments for the registered method `name`, read from its row of pmrf.METHODS:
    its stage and --conditional, a tiny SwinIR for the mmse stage and a tiny HDiT velocity otherwise, and,
    for a method with a posterior mean, `posterior_mean`: an MMSE checkpoint, or an architecture (an
    untrained f). None gives no f, which PMRF refuses."""
    method = METHODS[name]
    arguments = dict(stage=method.stage, conditional=method.conditional,
                     arch=TINY_SWINIR if method.stage == "mmse" else TINY_HDIT)
    if method.uses_posterior_mean and isinstance(posterior_mean, Mapping):
        arguments["mmse_model_arch"] = posterior_mean
    elif method.uses_posterior_mean and posterior_mean is not None:
        arguments["mmse_model_ckpt_path"] = str(posterior_mean)
    return arguments


def build_method(name: str, mmse_ckpt: Path | None, colorization: bool = False, **extra) -> MMSERectifiedFlow:
    """A tiny MMSERectifiedFlow of the registered method `name` (its f read from `mmse_ckpt`)."""
    return MMSERectifiedFlow(**{**method_arguments(name, mmse_ckpt), "colorization": colorization, **extra})


def save_lightning_mmse_checkpoint(path: Path, seed: int = 0) -> Path:
    """A checkpoint as our MMSE stage writes it: state_dict with model.*, hyper_parameters and ema."""
    torch.manual_seed(seed)
    mmse = MMSERectifiedFlow(stage="mmse", arch=TINY_SWINIR)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in mmse.model.state_dict().items()},
            "hyper_parameters": dict(mmse.hparams),
            "ema": mmse.ema.state_dict(),
        },
        path,
    )
    return path


def save_checkpoint(model: MMSERectifiedFlow, path: Path) -> Path:
    """`model` saved as train.py saves it, built, not trained: state_dict, hyper_parameters, ema (when the
    model keeps an EMA) and global_step 0."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    if model.ema is not None:
        checkpoint["ema"] = model.ema.state_dict()
    torch.save({**checkpoint, "global_step": 0}, path)
    return path


def table_source(method: Method, y: torch.Tensor, posterior_mean: torch.Tensor, noise: torch.Tensor,
                 sigma: float) -> torch.Tensor:
    """z0 as the methods table (lightning_models/pmrf.py) says: clip(f(y)) + σ·n, n, or y (a gray y on
    every channel) + σ·n."""
    return {"posterior_mean": posterior_mean + sigma * noise, "noise": noise,
            "measurement": y.expand_as(noise) + sigma * noise}[method.source]


def table_condition(method: Method, y: torch.Tensor, posterior_mean: torch.Tensor) -> torch.Tensor | None:
    """What the network sees besides x_t, as the methods table says: clip(f(y)), y as given, or nothing."""
    return {"posterior_mean": posterior_mean, "measurement": y, None: None}[method.condition]


class StubVelocity(nn.Module):
    """A velocity network with a known answer: `fn(x_t, t)`, called as v(x_t, t) like any velocity
    network. Records every input it sees."""

    def __init__(self, fn=None):
        super().__init__()
        self.fn = fn or (lambda x, t: torch.zeros_like(x[:, :3]))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return self.fn(x, t)


class StubPosteriorMean(nn.Module):
    """f(y) = 3·y − 1 on RGB (a gray y is replicated): values well outside [0, 1]. Records its inputs."""

    def __init__(self):
        super().__init__()
        self.calls: list[torch.Tensor] = []

    @staticmethod
    def unclipped(y):
        return 3 * y.expand(-1, 3, -1, -1) - 1

    def forward(self, y):
        self.calls.append(y.detach().clone())
        return self.unclipped(y)


# ---------------------------------------------------------------------------------- oracles

def brute_force_neighborhood(q, k, v, kernel_size):
    """Dense attention over all H·W keys with a mask built straight from NATTEN's window definition."""
    n, h, w, heads, d = q.shape
    mask = torch.zeros(h, w, h, w, dtype=torch.bool)
    r = kernel_size // 2
    for i in range(h):
        top = min(max(i - r, 0), h - kernel_size)
        for j in range(w):
            left = min(max(j - r, 0), w - kernel_size)
            mask[i, j, top : top + kernel_size, left : left + kernel_size] = True
    mask = mask.reshape(h * w, h * w).to(q.device)
    qf, kf, vf = (t.permute(0, 3, 1, 2, 4).reshape(n, heads, h * w, d) for t in (q, k, v))
    logits = qf @ kf.transpose(-1, -2)
    logits = logits.masked_fill(~mask, float("-inf"))
    out = logits.softmax(-1) @ vf
    return out.reshape(n, heads, h, w, d).permute(0, 2, 3, 1, 4)


TILED_CASES = [  # (h, w, k, tiling): square and non-square grids, every kernel, borders included
    (h, w, k, tiling)
    for tiling, grids in [("8x8/4x8", [(8, 8), (16, 16), (16, 24), (24, 8)]), ("8x16/4x8", [(16, 32), (8, 16)]),
                          ("4x8/4x8", [(12, 16)]), ("8x8/4x4", [(16, 8)])]
    for h, w in grids
    for k in (3, 5, 7)
]


def to_tiles(grid, t):
    """(n, h, w, heads, d) -> (n, 1, h·w, heads, d) in the grid's tile order."""
    return grid.to_tiles(t.flatten(-2)).unflatten(-1, t.shape[-2:])


def from_tiles(grid, t):
    return grid.from_tiles(t.flatten(-2)).unflatten(-1, t.shape[-2:])


def random_inception(features_list, cls=None, **kwargs):
    """A library InceptionV3 (torch-fidelity's by default) with its random initial weights (nothing
    loaded, nothing downloaded)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception

    no_download = mock.patch.object(fidelity_inception, "load_state_dict_from_url", lambda *a, **k: {})
    no_load = mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None)
    with no_download, no_load:
        return (cls or fidelity_inception.FeatureExtractorInceptionV3)("inception-v3-compat", features_list, **kwargs).eval()


# ----------------------------------------------------------------------------- faces and photos

def landmarks_at(center_xy, eye_distance: float, angle_deg: float = 0.0) -> np.ndarray:
    """Five landmarks of a face: the FFHQ template rotated, scaled and moved so that its eyes' midpoint
    sits at `center_xy` with `eye_distance` pixels between the eyes."""
    from whole_image.align import FFHQ_TEMPLATE_512

    template = FFHQ_TEMPLATE_512 - FFHQ_TEMPLATE_512[:2].mean(axis=0)
    scale = eye_distance / np.linalg.norm(FFHQ_TEMPLATE_512[1] - FFHQ_TEMPLATE_512[0])
    angle = math.radians(angle_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return template @ rotation.T * scale + np.asarray(center_xy, dtype=np.float64)


def face_at(center_xy, eye_distance: float, angle_deg: float = 0.0, score: float = 0.99):
    """A DetectedFace with its eyes' midpoint at `center_xy`, `eye_distance` pixels between the eyes."""
    from whole_image.detect import DetectedFace

    landmarks = landmarks_at(center_xy, eye_distance, angle_deg)
    half = eye_distance * 1.2
    box = np.array([center_xy[0] - half, center_xy[1] - half, center_xy[0] + half, center_xy[1] + 1.6 * half])
    return DetectedFace(box=box, landmarks=landmarks, score=score)


def textured_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth, varied content (so warps can be compared) with no green anywhere near pure green."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (max(2, height // 8), max(2, width // 8), 3)).astype(np.float32)
    smooth = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    smooth[:, :, 1] *= 0.4
    return np.clip(smooth, 0, 255).astype(np.uint8)


def frame_size(height: int, width: int) -> tuple[int, int]:
    """The size of the detection frame find_faces makes of a height x width photo."""
    from whole_image.detect import detection_scale

    factor = detection_scale(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def in_frame(face, photo_size: tuple[int, int], frame: tuple[int, int]):
    """`face` (photo coordinates) as a detector sees it in the detection frame."""
    from whole_image.detect import DetectedFace

    scale = np.array([frame[1] / photo_size[1], frame[0] / photo_size[0]])
    move = lambda points: points * scale + (scale - 1) / 2  # noqa: E731
    return DetectedFace(move(face.box.reshape(2, 2)).reshape(4), move(face.landmarks), face.score)


class StubDetector:
    """Finds fixed faces (given in photo coordinates, by photo size) in the detection frame it is shown,
    as a real detector would; records the frames it saw."""

    def __init__(self, faces_by_size: dict[tuple[int, int], list] | list):
        self.faces_by_size = faces_by_size
        self.seen = []

    def detect(self, image):
        self.seen.append(image)
        frame = image.shape[:2]
        if isinstance(self.faces_by_size, list):  # the photo is the frame
            return list(self.faces_by_size)
        for size, faces in self.faces_by_size.items():
            if frame_size(*size) == frame:
                return [in_frame(face, size, frame) for face in faces]
        return []


def whole_photo_parser():
    """inference.py's own arguments that the whole-photo options take, plus the whole-photo ones."""
    import argparse

    from whole_image.cli import add_whole_image_arguments

    parser = argparse.ArgumentParser()
    parser.add_argument("--lq_data_path")
    parser.add_argument("--output_dir")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--skip_existing", action="store_true")
    add_whole_image_arguments(parser)
    return parser


def parse_whole_photo_options(argv: list[str]):
    """WholeImageOptions from a command line, as inference.py builds them."""
    from whole_image.cli import WholeImageOptions

    return WholeImageOptions.from_args(whole_photo_parser().parse_args(argv))


# ------------------------------------------------------------------------------------------ files

class PlantedCode:
    """Unpickling this runs code: it creates `marker`, a stand-in for anything a malicious weights file or
    cache could run. `ran` says whether that happened (conftest.py's `planted_code` gives one)."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (open, (str(self.marker), "w"))

    @property
    def ran(self) -> bool:
        return self.marker.exists()


def write_images(folder: Path, count: int, size: tuple[int, int] = (32, 32), seed: int = 0, ext: str = "png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(count):
        # smooth images (a blurred gradient + noise) so a network can learn something in a few steps
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(yy / h), (xx / w), ((yy + xx) / (h + w))], axis=-1)
        image = np.clip(base * 0.8 + rng.random(3) * 0.2 + rng.normal(0, 0.02, (h, w, 3)), 0, 1)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{i:03d}.{ext}")
    return folder


def write_arch_json(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid PNG signature and IHDR claiming width×height RGB pixels (far above the decompression-bomb
    limit by default), followed by very little data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------------------- programs

@functools.cache
def load_program(path: str) -> ModuleType:
    """A program of the repository (`path` from its root: "test.py", "scripts/gaussian_experiment.py") as
    a module, loaded by path under the name pmrf_<stem>_program: `import test` could find the standard
    library's `test` package instead of the reference's test.py, and scripts/ is no package."""
    location = ROOT / path
    spec = importlib.util.spec_from_file_location(f"pmrf_{location.stem}_program", location)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_program(*args, umask: int | None = None, env: dict | None = None, timeout: float = 600):
    """A program of the repository (train.py, inference.py, …) as a user runs it, in a session of its
    own so that a hung program and the processes it started (DDP) can all be killed after `timeout`.
    With `umask`, the shell sets it and then becomes the program."""
    command = [sys.executable, *map(str, args)]
    if umask is not None:
        command = ["/bin/sh", "-c", f'umask {umask:03o} && exec "$0" "$@"', *command]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(f"{args[0]} did not finish within {timeout} s") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def call(main, argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a program's main() run in-process, as the process would end: a
    SystemExit's message goes to stderr. Any other exception (what a traceback would show) fails the test."""
    capsys.readouterr()
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> str:
    """stderr holds exactly one error line, which contains every needle, and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    following = err[err.index(lines[0]) + len(lines[0]):].strip()
    assert not following, f"the error goes on over more lines:\n{err}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]
