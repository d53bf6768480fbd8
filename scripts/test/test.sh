#!/usr/bin/env bash
# Test all five methods of one controlled experiment (paper §5.2) on CelebA-Test 256×256.
# Run from the repository root. Set DEGRADATION, TEST_DATA_ROOT and the checkpoint folder.
set -euo pipefail
DEGRADATION=gaussian_noise_035  # or sr_bicubic_x8_gaussian_noise_005, colorization_gaussian_noise_025, random_inpainting_gaussian_noise_01
TEST_DATA_ROOT=/path/to/celeba-256-test/ground-truth
CKPT_ROOT=./checkpoints/controlled_experiments/$DEGRADATION
RESULTS=./results/controlled_experiments

for METHOD in mmse pmrf naive_flow posterior_conditioned_on_mmse posterior_conditioned_on_y; do
  python test.py \
    --degradation "$DEGRADATION" \
    --test_data_root "$TEST_DATA_ROOT" \
    --ckpt_path "$CKPT_ROOT/$METHOD/epoch=999-step=273000.ckpt" \
    --results_path "$RESULTS" \
    --img_size 256 \
    --batch_size 32 \
    --num_gpus 1 \
    --precision 32 \
    --seed 0 \
    --num_flow_steps 5 10 20 50 100
done
