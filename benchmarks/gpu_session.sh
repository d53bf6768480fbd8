#!/usr/bin/env bash
# Everything a GPU session measures for issue 19, most important first, under one deadline.
#
#   benchmarks/gpu_session.sh [SECONDS]      # on the GPU machine; SECONDS (default 570) bounds the whole run
#   benchmarks/gpu_session.sh --dry-run      # the same steps at toy sizes on this machine's CPU: checks the script
#
# Through the device tool:  run(command="benchmarks/gpu_session.sh 570", timeout_s=600).
# The benchmarks and tests/test_cuda.py need only the GPU image's packages (torch, lightning, timm, einops,
# numpy, pillow, opencv, pytest). Wheels in .whl/ (ignored by git; carry=[".whl"]) are installed first
# when that folder exists, for a package a later image might lack.
#
# Steps (a step that would start too late is skipped and listed in the log):
#   1. tests/test_cuda.py: flex forward and backward against brute force (row-major and tile order),
#      compiled HDiT (tile order, TF32 precision, any batch size, a bf16 training step), bf16 restoration;
#   2. inference at 512², K=25, batch 16: the reference's way (its compile_wrap kernels), --compile off,
#      the default (compile auto on a 512-image job: figures with and without the compile time, and the
#      measured break-even of the auto rule), bf16+compile, with the top kernels of default and bf16+compile;
#   3. attention: keys computed per query of each token order's BlockMask at the 128² and 64² levels,
#      and the flex kernel timed in the row-major and tile orders (bf16, batch 16, forward and backward);
#   4. training at 512², batch 16, compiled (train.py's default): img/s and peak GiB;
#   5. extras: batch 64 (default and bf16+compile), CUDA graphs (reduce-overhead), a training step
#      with the tile order forced under bf16.
# Results go to $OUT (or ./gpu_results): session.log (every step's output) and one JSON per step, at most
# 8 files, which is what the device tool brings back.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
DRY=0
DEADLINE=
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    *[!0-9]*) echo "usage: $0 [SECONDS] [--dry-run]" >&2; exit 2 ;;
    *) DEADLINE=$arg ;;
  esac
done
# every step's time limit is multiplied by SCALE: a CPU builds the full-size networks slowly
if [ "$DRY" = 1 ]; then SCALE=8; else SCALE=1; fi
DEADLINE=${DEADLINE:-$((570 * SCALE))}
mkdir -p "$OUT"
LOG="$OUT/session.log"
: >"$LOG"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$DRY" = 1 ] && PY=${PYTHON:-.venv/bin/python}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    && export PYTHONPATH=$SITE
fi

if [ "$DRY" = 1 ]; then
  # toy sizes on the CPU; compiled cases use dynamo's eager backend (inductor would take minutes here)
  export PMRF_BENCH_COMPILE_BACKEND=eager OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  DEV=cpu
  INF="--device cpu --image_size 64 --num_flow_steps 1 --batch 1 --repeats 1 --backends torch --job_images 4 --in_process"
  ATT="--device cpu --grids 16 --backends torch,flex --mask_sizes 128 --no_hdit --repeats 1 --warmup 0 --in_process"
  TRN="--device cpu --image_size 64 --batches 1 --backends torch --repeats 1 --in_process"
  B64=2
else
  DEV=cuda
  INF="--device cuda --backends flex --repeats 2"
  ATT="--device cuda --grids 128,64 --backends flex --tilings rows,8x8/4x8,8x16/4x8 --backward --dtype bfloat16 --batch 16 --no_hdit --warmup 2 --repeats 10"
  TRN="--device cuda --backends flex --batches 16 --repeats 5"
  B64=64
fi

{
  $PY -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) + ' | ' + str(torch.cuda.get_device_properties(0).total_memory // 2**30) + ' GiB' if torch.cuda.is_available() else 'no CUDA')"
  $PY -c "import natten; print('natten', natten.__version__, 'HAS_LIBNATTEN', natten.HAS_LIBNATTEN)" 2>&1 | tail -1
  echo "deadline ${DEADLINE}s, device $DEV, dry run $DRY"
} 2>&1 | tee -a "$LOG"

# step NAME MAX_SECONDS COMMAND...: run with a timeout that ends before the deadline, output into the log
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "== $name: skipped (deadline)" | tee -a "$LOG"
    return
  fi
  limit=$((limit * SCALE))
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== $name (at ${SECONDS}s, limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "== $name: exit ${PIPESTATUS[0]} at ${SECONDS}s" | tee -a "$LOG"
}

step test_cuda 200 $PY -m pytest -q -p no:cacheprovider --durations=10 tests/test_cuda.py
step inference 170 $PY benchmarks/inference.py $INF --modes reference,default-eager,default,bf16+compile \
  --profile --time_budget_s $((150 * SCALE)) --output_json "$OUT/inference.json"
step attention 100 $PY benchmarks/attention.py $ATT --output_json "$OUT/attention.json"
step train 120 $PY benchmarks/train.py $TRN --compile compile --tilings auto --output_json "$OUT/train.json"
left=$(((DEADLINE - SECONDS - 20) / SCALE))
step inference_more $left $PY benchmarks/inference.py $INF \
  --modes "default@$B64,bf16+cudagraphs,bf16+compile@$B64,cudagraphs" --time_budget_s $(((left - 50) * SCALE > 0 ? (left - 50) * SCALE : 1)) \
  --output_json "$OUT/inference_more.json"
left=$(((DEADLINE - SECONDS) / SCALE))
step train_tiled $left $PY benchmarks/train.py $TRN --compile compile --tilings 8x8/4x8 --output_json "$OUT/train_tiled.json"
echo "== done at ${SECONDS}s; files: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
