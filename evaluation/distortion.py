"""PSNR, SSIM and MSE between restored and ground-truth images (blind face restoration).

PSNR and SSIM are BasicSR's PyTorch versions on RGB in [0, 1] with no border crop; MSE is on the
0-255 scale. Each is averaged over images.
"""

from __future__ import annotations

import os

import torch

import compat.basicsr_torchvision  # noqa: F401  (must precede basicsr)

# isort: split
from basicsr.metrics.psnr_ssim import calculate_psnr_pt, calculate_ssim_pt

from evaluation.inputs import mean_over_pairs, paired_files


def mse_255(rec: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error of uint8 (or 0-255 float) batches (B, C, H, W) -> (B,)."""
    return (rec.double() - gt.double()).square().mean(dim=(1, 2, 3))


def psnr_ssim_mse_batch(rec: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR (dB), SSIM and 0-255 MSE of two uint8 batches (B, 3, H, W)."""
    rec01, gt01 = rec.double() / 255.0, gt.double() / 255.0
    return {
        "psnr": calculate_psnr_pt(gt01, rec01, crop_border=0),
        "ssim": calculate_ssim_pt(gt01, rec01, crop_border=0),
        "mse": mse_255(rec, gt),
    }


@torch.inference_mode()
def calculate_psnr_ssim_mse(
    rec_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
) -> dict[str, float]:
    """Mean PSNR, SSIM and MSE (0-255) over same-named images of two folders."""
    pairs = paired_files(rec_dir, gt_dir, "--gt_path")
    loader = dict(device=device, batch_size=batch_size, num_workers=num_workers, desc="psnr/ssim/mse")
    return mean_over_pairs(pairs, psnr_ssim_mse_batch, **loader)
