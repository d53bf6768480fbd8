"""Builders shared by the module / checkpoint / program tests."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import TINY_HDIT, TINY_SWINIR
from PIL import Image

from lightning_models.mmse_rectified_flow import MMSERectifiedFlow

ROOT = Path(__file__).resolve().parents[1]

# method name -> constructor arguments (besides arch / mmse checkpoint)
METHODS = {
    "mmse": dict(stage="mmse"),
    "pmrf": dict(stage="flow", conditional=False),
    "posterior_conditioned_on_mmse": dict(stage="flow", conditional=True),
    "posterior_conditioned_on_y": dict(stage="flow", conditional=True),
    "naive_flow": dict(stage="naive_flow", mmse_noise_std=0.1),
}
USES_MMSE = {"pmrf", "posterior_conditioned_on_mmse"}


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


def build_method(name: str, mmse_ckpt: Path | None, colorization: bool = False, **extra) -> MMSERectifiedFlow:
    kwargs = dict(METHODS[name], **extra)
    arch = TINY_SWINIR if name == "mmse" else TINY_HDIT
    if name in USES_MMSE and mmse_ckpt is not None:
        kwargs["mmse_model_ckpt_path"] = str(mmse_ckpt)
    return MMSERectifiedFlow(arch=arch, colorization=colorization, **kwargs)


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


@functools.cache
def load_test_program():
    """test.py as a module, loaded by path: `import test` could find the standard library's package."""
    spec = importlib.util.spec_from_file_location("pmrf_test_program", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
