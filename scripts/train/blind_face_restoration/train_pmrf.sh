#!/usr/bin/env bash
# PMRF for blind face restoration: HDiT flow from the DifFace SwinIR posterior mean.
# Run from the repository root. Set the data paths; adjust --num_gpus and --num_workers to your machine.
python train.py \
  --stage flow \
  --degradation difface \
  --source_noise_std 0.1 \
  --arch hdit_ImageNet256Sp4 \
  --mmse_model_arch swinir_L \
  --mmse_model_ckpt_path ./checkpoints/swinir_restoration512_L1.pth \
  --train_data_root /path/to/data/ffhq512 \
  --val_data_root /path/to/data/celebahq_test_512 \
  --img_size 512 \
  --num_gpus 16 \
  --train_batch_size 256 \
  --val_batch_size 32 \
  --num_workers 80 \
  --max_epochs 3850 \
  --check_val_every_n_epoch 50 \
  --num_flow_steps 50 \
  --ema_decay 0.9999 \
  --eps 0.0 \
  --t_schedule stratified_uniform \
  --lr 5e-4 \
  --weight_decay 1e-2 \
  --precision bf16-mixed \
  --wandb_project_name PMRF \
  --wandb_group blind_face_restoration
