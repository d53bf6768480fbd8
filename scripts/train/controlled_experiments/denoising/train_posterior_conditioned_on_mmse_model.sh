#!/usr/bin/env bash
# Controlled experiment, denoising: a flow from noise conditioned on the posterior mean (train_mmse.sh first).
# Run from the repository root after setting the data (and MMSE checkpoint) paths.
# The MMSE checkpoint: train_mmse.sh writes it to outputs/denoising/mmse/checkpoints/last.ckpt.
python train.py \
  --stage flow \
  --conditional \
  --arch hdit_XL2 \
  --mmse_model_arch swinir_M \
  --mmse_model_ckpt_path /path/to/checkpoint/last.ckpt \
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
  --wandb_group denoising_posterior_conditioned_on_mmse_model \
  --output_dir outputs/denoising/posterior_conditioned_on_mmse_model
