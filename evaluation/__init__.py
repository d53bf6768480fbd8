"""Evaluation metrics of the PMRF paper, each an importable function in its own module.

- `niqe.calculate_niqe`                        NIQE (BasicSR)
- `distortion.calculate_psnr_ssim_mse`         PSNR, SSIM (BasicSR), MSE on the 0-255 scale
- `lpips_vgg.calculate_lpips`                  LPIPS-VGG of the `lpips` package (blind evaluation)
- `identity.calculate_identity_distance`       ArcFace angle "Deg" and the identical-pair count
- `landmarks.calculate_landmark_distance`      AWing FAN landmark distance "LMD"
- `ind_rmse.calculate_ind_rmse`                MSE/PSNR to the MMSE restoration (IndRMSE)
- `fidelity.calculate_fidelity_metrics`        FID, KID, IS, precision/recall (torch-fidelity)
- `piq_metrics.calculate_piq_distortion`       piq PSNR/SSIM and MSE (controlled experiments)
- `piq_metrics.calculate_piq_lpips`            piq LPIPS (controlled experiments)

The command-line programs are `compute_metrics_blind.py` and `compute_metrics_controlled_experiments.py`
(thin shells over `cli`: options, the metric tables, skipping and the report); started as files, they run
as their modules (`run_as_module`). Weights files are found by `utils.registry.find_weights`.
"""
