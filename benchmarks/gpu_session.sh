#!/usr/bin/env bash
# One GPU session's checks and figures, most important first, each step bounded in time.
#   benchmarks/gpu_session.sh tests [SECONDS]   # the CUDA tests (tests/test_cuda.py)
#   benchmarks/gpu_session.sh bench [SECONDS]   # inference and training benchmarks at full size
# SECONDS (default 540) is the whole run's deadline: a step that would start too late is skipped.
# Results (logs and JSON) go to $OUT, or ./gpu_results. Wheels of pure-Python packages the GPU image
# lacks (natten, torch-ema) are installed from .whl/ when that folder exists.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
DEADLINE=${2:-540}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    && export PYTHONPATH=$SITE
fi
{
  $PY -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0), '|', torch.cuda.get_device_properties(0).total_memory // 2**30, 'GiB')"
  $PY -c "import natten; print('natten', natten.__version__, 'HAS_LIBNATTEN', natten.HAS_LIBNATTEN)" 2>&1 | tail -1
} | tee -a "$OUT/env.txt"

# step NAME MAX_SECONDS COMMAND...: run with a timeout that ends before the deadline; log to $OUT/NAME.log
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 25 ]; then
    echo "== $name: skipped (deadline)" | tee -a "$OUT/skipped.txt"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== $name (at ${SECONDS}s, limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
}

case "${1:-bench}" in
  tests)
    step test_cuda 400 $PY -m pytest -q -p no:cacheprovider --durations=10 tests/test_cuda.py
    ;;
  bench)
    # The targets first: the reference's way, the default command, bf16 + compile (flex), batch 64's memory.
    step inference_targets 180 $PY benchmarks/inference.py --device cuda --modes reference,default,bf16+compile \
      --backends flex --memory_batch 64 --profile --repeats 2 --output_json "$OUT/inference_targets.json"
    step train_flex_eager 60 $PY benchmarks/train.py --device cuda --backends flex --batches 8,16 --compile eager \
      --repeats 3 --output_json "$OUT/train_flex_eager.json"
    step train_flex_compile 140 $PY benchmarks/train.py --device cuda --backends flex --batches 16 --compile compile \
      --repeats 3 --output_json "$OUT/train_flex_compile.json"
    step train_torch_eager 60 $PY benchmarks/train.py --device cuda --backends torch --batches 8,16 --compile eager \
      --repeats 2 --output_json "$OUT/train_torch_eager.json"
    step inference_flex 60 $PY benchmarks/inference.py --device cuda --modes fp32,tf32,bf16 --backends flex \
      --repeats 1 --output_json "$OUT/inference_flex.json"
    step inference_torch 150 $PY benchmarks/inference.py --device cuda --modes fp32,tf32,bf16,bf16+compile \
      --backends torch --repeats 1 --output_json "$OUT/inference_torch.json"
    ;;
esac
echo "== done at ${SECONDS}s"
