"""Using a trained model: loading it ready for inference, and restoring batches of faces with it.

`load_model` is what inference.py, test.py and app.py share; `FaceRestorer` is the callable the
whole-photo pipeline and the web demo hand their aligned faces to.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.cli import HF_REPO


def load_model(
    ckpt_path: str | os.PathLike,
    huggingface: bool = False,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
    **overrides,
):
    """A model in eval mode on `device`, from a Lightning .ckpt, a save_pretrained folder or a Hub id.

    With `use_ema` the EMA weights of a Lightning checkpoint become the model's weights (Hub and saved
    folders already hold EMA weights). Raises FileNotFoundError / ValueError / RuntimeError with a
    message that names the file.
    """
    from lightning_models.mmse_rectified_flow import MMSERectifiedFlow

    path = Path(ckpt_path)
    if huggingface or path.is_dir():
        model = MMSERectifiedFlow.from_pretrained(str(ckpt_path), **overrides)
    else:
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {ckpt_path} not found. Put the official checkpoint there, or use "
                f"--ckpt_path {HF_REPO} --ckpt_path_is_huggingface"
            )
        model = MMSERectifiedFlow.load_from_checkpoint(path, **overrides)
        if use_ema:
            model.copy_ema_to_model()
    return model.eval().to(device)


def precision_context(device: torch.device | str, bf16: bool):
    """bfloat16 autocast on CUDA when asked for; nothing otherwise (float32, TF32 matmuls where enabled)."""
    device = torch.device(device)
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@dataclass
class Restoration:
    """A batch restored: PMRF's estimate and, when the model has one, the posterior mean (float, CPU)."""

    xhat: torch.Tensor
    posterior_mean: torch.Tensor | None = None


class FaceRestorer:
    """Restores batches of aligned faces (N, C, H, W) in [0, 1] with a loaded model, on its device.

    `seed` makes the source noise reproducible (one generator, advanced batch after batch).
    """

    def __init__(self, model, num_flow_steps: int = 25, seed: int | None = None, bf16: bool = False):
        self.model = model
        self.num_flow_steps = int(num_flow_steps)
        self.bf16 = bf16
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def has_posterior_mean(self) -> bool:
        return getattr(self.model, "mmse_model", None) is not None

    @torch.no_grad()
    def restore(self, images: torch.Tensor) -> Restoration:
        device = self.device
        with precision_context(device, self.bf16):
            out = self.model.restore(images.to(device), self.num_flow_steps, generator=self.generator)
        mmse = out.get("mmse")
        return Restoration(out["xhat"].float().cpu(), None if mmse is None else mmse.float().cpu())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.restore(images).xhat


def make_face_restorer(model, num_flow_steps: int, seed: int | None = None, bf16: bool = False) -> FaceRestorer:
    return FaceRestorer(model, num_flow_steps, seed, bf16)
