#!/usr/bin/env bash
# Controlled experiment, denoising: the posterior-mean (MMSE) predictor, trained with an MSE loss.
# Run from the repository root after setting the data (and MMSE checkpoint) paths.
python train.py \
  --stage mmse \
  --arch swinir_M \
  --degradation gaussian_noise_035 \
  --train_data_root /path/to/data/ffhq256 \
  --val_data_root /path/to/data/celebahq_test_256 \
  --img_size 256 \
  --num_gpus 4 \
  --train_batch_size 256 \
  --val_batch_size 32 \
  --num_workers 40 \
  --max_epochs 1000 \
  --check_val_every_n_epoch 10 \
  --num_flow_steps 50 \
  --ema_decay 0.9999 \
  --eps 0.0 \
  --t_schedule stratified_uniform \
  --lr 5e-4 \
  --weight_decay 1e-2 \
  --precision bf16-mixed \
  --wandb_project_name PMRF \
  --wandb_group denoising_mmse \
  --output_dir outputs/denoising/mmse
