#!/usr/bin/env bash
# Blind face restoration of aligned 512×512 faces with the official checkpoint from the Hugging Face Hub.
# Run from the repository root. For ordinary photos (any size, several faces) add --whole_image.
python inference.py \
  --ckpt_path ohayonguy/PMRF_blind_face_image_restoration \
  --ckpt_path_is_huggingface \
  --lq_data_path /path/to/lq/images \
  --output_dir /path/to/results/dir \
  --batch_size 64 \
  --num_flow_steps 25
