"""Distortion metrics of the controlled experiments, computed with piq.

PSNR and SSIM are piq's (data range 1, piq's defaults otherwise), LPIPS is piq's VGG16 LPIPS on
inputs in [0, 1], MSE is on the 0-255 scale; all are means of per-image values.

piq's `LPIPS()` downloads its two weight files on construction and unpickles them. Here the same
network (piq's `ContentLoss` over VGG16 relu1_2 ... relu5_3 with the learned LPIPS weights and
feature normalisation, which is exactly how `piq.LPIPS` is defined) is built from local files read
by `utils.weights` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from evaluation.distortion import mse_255
from evaluation.inputs import mean_over_pairs, paired_files
from evaluation.lpips_vgg import vgg16_trunk_weights
from evaluation.weights import read_tensor_list
from utils.registry import find_weights
from utils.weights import load_into

LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def read_piq_lpips_weights(path: str | os.PathLike) -> list[torch.Tensor]:
    """The five per-layer weight tensors of piq's `lpips_weights.pt` (a list, or a dict in layer order)."""
    return read_tensor_list(path, len(LPIPS_LAYERS))


def build_piq_lpips(
    vgg_weights_path: str | os.PathLike, lpips_weights_path: str | os.PathLike
) -> torch.nn.Module:
    """piq's LPIPS (reduction 'none') from a torchvision VGG16 checkpoint and piq's LPIPS weights."""
    import piq
    from piq.perceptual import VGG16_LAYERS
    from torchvision.models.vgg import cfgs, make_layers

    trunk = make_layers(cfgs["D"])  # VGG16's `features`, without building the classifier
    load_into(trunk, vgg16_trunk_weights(vgg_weights_path), vgg_weights_path)
    metric = piq.ContentLoss(
        feature_extractor=trunk,
        layers=[VGG16_LAYERS[name] for name in LPIPS_LAYERS],
        weights=read_piq_lpips_weights(lpips_weights_path),
        replace_pooling=False,
        distance="mse",
        reduction="none",
        normalize_features=True,
    )
    return metric.eval().requires_grad_(False)


@torch.inference_mode()
def calculate_piq_distortion(
    rec_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
) -> dict[str, float]:
    """Mean piq PSNR, piq SSIM and MSE (0-255) over same-named images of two folders."""
    import piq

    def per_batch(rec: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        rec01, gt01 = rec.float() / 255.0, gt.float() / 255.0
        return {
            "psnr": piq.psnr(gt01, rec01, data_range=1.0, reduction="none"),
            "ssim": piq.ssim(gt01, rec01, data_range=1.0, reduction="none"),
            "mse": mse_255(rec, gt),
        }

    pairs = paired_files(rec_dir, gt_dir, "--gt_path")
    loader = dict(device=device, batch_size=batch_size, num_workers=num_workers, desc="psnr/ssim/mse")
    return mean_over_pairs(pairs, per_batch, **loader)


@torch.inference_mode()
def calculate_piq_lpips(
    rec_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    vgg_weights_path: str | os.PathLike | None = None,
    lpips_weights_path: str | os.PathLike | None = None,
    ckpt_dir: str | os.PathLike | None = None,
    offline: bool = False,
) -> float:
    """Mean piq LPIPS between same-named images of two folders."""
    pairs = paired_files(rec_dir, gt_dir, "--gt_path")
    vgg_weights_path = Path(vgg_weights_path or find_weights("vgg16", [ckpt_dir], offline))
    lpips_weights_path = Path(lpips_weights_path or find_weights("piq_lpips", [ckpt_dir], offline))
    metric = build_piq_lpips(vgg_weights_path, lpips_weights_path).to(device)
    per_batch = lambda rec, gt: {"lpips": metric(gt.float() / 255.0, rec.float() / 255.0)}  # noqa: E731
    loader = dict(device=device, batch_size=batch_size, num_workers=num_workers, desc="lpips (piq)")
    return mean_over_pairs(pairs, per_batch, **loader)["lpips"]
