"""Builders shared by the module / checkpoint / program tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from conftest import TINY_HDIT, TINY_SWINIR
from PIL import Image

from lightning_models.mmse_rectified_flow import MMSERectifiedFlow

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
