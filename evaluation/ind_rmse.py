"""IndRMSE inputs: MSE (0-255) and PSNR between each restored image and the MMSE restoration.

For real-world inputs there is no ground truth; the distance to the posterior-mean estimate
indicates the true RMSE (the paper's IndRMSE is the square root of `ind_mse`).
"""

from __future__ import annotations

import os

import torch

import compat.basicsr_torchvision  # noqa: F401  (must precede basicsr)

# isort: split
from basicsr.metrics.psnr_ssim import calculate_psnr_pt

from evaluation.distortion import mse_255
from evaluation.inputs import mean_over_pairs, paired_files


@torch.inference_mode()
def calculate_ind_rmse(
    rec_dir: str | os.PathLike,
    mmse_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
) -> dict[str, float]:
    """Mean `ind_mse` (0-255 scale) and `ind_psnr` over same-named images of the two folders."""
    def per_batch(rec: torch.Tensor, mmse: torch.Tensor) -> dict[str, torch.Tensor]:
        psnr = calculate_psnr_pt(mmse.double() / 255.0, rec.double() / 255.0, crop_border=0)
        return {"ind_mse": mse_255(rec, mmse), "ind_psnr": psnr}

    pairs = paired_files(rec_dir, mmse_dir, "--mmse_rec_path")
    loader = dict(device=device, batch_size=batch_size, num_workers=num_workers, desc="ind_rmse")
    return mean_over_pairs(pairs, per_batch, **loader)
