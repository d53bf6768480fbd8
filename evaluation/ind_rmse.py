"""IndRMSE inputs: MSE (0-255) and PSNR between each restored image and the MMSE restoration.

For real-world inputs there is no ground truth; the distance to the posterior-mean estimate
indicates the true RMSE (the paper's IndRMSE is the square root of `ind_mse`).
"""

from __future__ import annotations

import os

import torch

import compat.basicsr_torchvision  # noqa: F401  (must precede basicsr)
from basicsr.metrics.psnr_ssim import calculate_psnr_pt
from evaluation.distortion import mse_255
from evaluation.inputs import PairDataset, batches, paired_files


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
    rec_files, mmse_files, same_size = paired_files(rec_dir, mmse_dir, "--mmse_rec_path")
    total_mse = total_psnr = 0.0
    for rec, mmse in batches(
        PairDataset(rec_files, mmse_files), batch_size, num_workers, same_size, "ind_rmse"
    ):
        rec, mmse = rec.to(device), mmse.to(device)
        total_mse += mse_255(rec, mmse).sum().item()
        total_psnr += (
            calculate_psnr_pt(mmse.double() / 255.0, rec.double() / 255.0, crop_border=0).sum().item()
        )
    return {"ind_mse": total_mse / len(rec_files), "ind_psnr": total_psnr / len(rec_files)}
