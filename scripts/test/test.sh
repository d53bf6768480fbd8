#!/usr/bin/env bash
# Test all five methods of one controlled experiment on CelebA-Test 256×256: the
# reference's test.sh (colorization, batch 128, 10 workers, K = 100). Run from the repository root;
# set DEGRADATION, TEST_DATA_ROOT and the checkpoint folder.
set -euo pipefail
DEGRADATION=colorization_gaussian_noise_025  # or sr_bicubic_x8_gaussian_noise_005, gaussian_noise_035, random_inpainting_gaussian_noise_01
TEST_DATA_ROOT=/path/to/celebahq_test_256
CKPT_ROOT=./checkpoints/controlled_experiments/$DEGRADATION
RESULTS=./controlled_experiments_results/

for METHOD in mmse naive_flow pmrf posterior_conditioned_on_mmse posterior_conditioned_on_y; do
  python test.py \
    --precision 32 \
    --degradation "$DEGRADATION" \
    --test_data_root "$TEST_DATA_ROOT" \
    --num_gpus 1 \
    --batch_size 128 \
    --num_workers 10 \
    --img_size 256 \
    --ckpt_path "$CKPT_ROOT/$METHOD/epoch=999-step=273000.ckpt" \
    --results_path "$RESULTS" \
    --num_flow_steps 100
    # --num_flow_steps 5 10 20 50 100
done
