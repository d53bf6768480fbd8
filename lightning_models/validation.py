"""What validation measures and shows besides MSE: FID / Inception Score and image grids."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


class ValidationMetrics:
    """FID and Inception Score of restored images (torchmetrics, inputs in [0, 1]).

    The two torchmetrics modules are the reference's `self.fid` and `self.inception_score`: the
    LightningModule registers them under those names, so its checkpoints hold `fid.inception.*` and
    `inception_score.inception.*` as the reference's do. This class only groups what is done with them.
    """

    def __init__(self, fid: nn.Module, inception_score: nn.Module):
        self.fid, self.inception_score = fid, inception_score

    @classmethod
    def create(cls, offline: bool = True, metrics_ckpt_dir: str | os.PathLike | None = None) -> ValidationMetrics | None:
        """The metrics, or None (with one warning) when the Inception weights are not available: found
        where `utils.registry` looks for them (`metrics_ckpt_dir` (train.py's --metrics_ckpt_dir) first,
        then evaluation/metrics_ckpt/ and torch's hub cache), downloaded into the cache unless `offline`.

        The weights are read by the project (tensors only, `utils.inception`) and handed to torchmetrics,
        which would otherwise unpickle the file itself.
        """
        from utils.inception import torchmetrics_inception
        from utils.registry import find_weights
        from utils.weights import MissingWeightsError, WeightsReadError

        try:
            weights = find_weights("inception", [metrics_ckpt_dir], offline)
        except MissingWeightsError as error:
            _warn_once(f"validation FID and Inception Score skipped: {error}")
            return None
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
            from torchmetrics.image.inception import InceptionScore

            fid = FrechetInceptionDistance(feature=torchmetrics_inception(weights, ["2048"]), normalize=True)
            inception = InceptionScore(feature=torchmetrics_inception(weights, ["logits_unbiased"]), normalize=True)
        except (MissingWeightsError, WeightsReadError, RuntimeError, ValueError, ImportError) as error:
            _warn_once(f"validation FID and Inception Score skipped: {error}")  # never stop training over it
            return None
        return cls(fid, inception)

    def reset(self) -> ValidationMetrics:
        self.fid.reset()
        self.inception_score.reset()
        return self

    def update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        fake, real = fake.float().clamp(0, 1), real.float().clamp(0, 1)
        self.fid.update(real, real=True)
        self.fid.update(fake, real=False)
        self.inception_score.update(fake)

    def compute(self) -> dict[str, torch.Tensor]:
        """The reference's keys: fid, inception_score_mean, inception_score_std."""
        is_mean, is_std = self.inception_score.compute()
        return {"fid": self.fid.compute(), "inception_score_mean": is_mean, "inception_score_std": is_std}


class ValidationImages:
    """Keeps the first validation batch and writes it as one grid image per epoch.

    Panels carry the reference's names (logged as ``val_images/<name>``) and its layout: the first
    `NUM_IMAGES` images of x, y, xhat, source_distribution_samples and xhat_mmse in one row, and x_t_seq,
    every one of the K+1 states of the first image's trajectory (the source first) in one row, all
    without padding.
    """

    NUM_IMAGES = 5

    def __init__(self) -> None:
        self.rows: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.rows = {}

    def keep(self, x, y, xhat, trajectory, z0, mmse) -> None:
        """`trajectory`: the first image's states, z0 first (K+1 tensors of (C, H, W) or (1, C, H, W))."""
        n = self.NUM_IMAGES
        rows = {"x": x[:n], "y": y[:n], "xhat": xhat[:n]}
        if trajectory:
            rows["x_t_seq"] = torch.stack([state.reshape(state.shape[-3:]) for state in trajectory])
        if z0 is not None:
            rows["source_distribution_samples"] = z0[:n]
        if mmse is not None:
            rows["xhat_mmse"] = mmse[:n]
        self.rows = {k: v.detach().float().cpu().clamp(0, 1) for k, v in rows.items()}

    def save(self, folder: Path, epoch: int, logger=None) -> None:
        if not self.rows:
            return
        from torchvision.utils import make_grid

        from utils.images import save_rgb, tensor_to_uint8

        for name, images in self.rows.items():
            images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
            grid = make_grid(images, nrow=images.shape[0], padding=0)
            save_rgb(tensor_to_uint8(grid), folder / f"epoch={epoch:04d}" / f"{name}.png")
            if logger is not None and hasattr(logger, "log_image"):
                try:
                    logger.log_image(key=f"val_images/{name}", images=[grid])
                except Exception:  # image logging is a convenience; never fail validation over it
                    pass
