#!/usr/bin/env bash
# The device checks of issue 17 in one run, at most 8 minutes on one H100/H200: the first thing
# to run whenever a GPU is lent, its results committed.
#
#   bash bench/gpu.sh [OUT]         # from the repository root; OUT defaults to bench/results
#   bash bench/gpu.sh OUT learn     # only issue 20's GPU target, at most 4 minutes (below)
#
# 1. the CUDA tests;
# 2. `bench model --device cuda` over the service's candidate paths (service/execution.py);
# 3. `bench service --device cuda`: the measured policy against no batching, 1 to 64 clients,
#    one size (256) and mixed sizes (256, 512, 1024);
# 4. `sr_x8` at 8 clients (128x128 in, 1024x1024 out);
# 5. style blends on the multi-style network (`bench styles`), mixed styles beside them.
# Each writes JSON and a plot named after the GPU (e.g. service-cuda-h200.json) under OUT, and
# a log of its own; a step that fails or runs out of time does not stop the next.
#
# `learn`: a painting uploaded to POST /v1/styles of the service on the GPU, under the load of
# `bench live` (`--device cuda`), to be served within a minute. The GPU machine has no
# ../shared/data and no loss network: they travel in .carry/ (`python -m bench.gpu_carry`).
#
# A machine without the project's dependencies (a bare GPU image with torch only) installs them
# from .whl/ when it is there: `bash bench/gpu-wheels.sh` fills it on a machine with pip, and
# .carry/ too. Carry .whl always, and .carry for `learn` (bench.gpu_carry takes as many photos as
# the device tool's 64 MiB leave room for beside the tree and .whl).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results}
PART=${2:-checks}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower())") || {
  echo "no CUDA device"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu-$gpu.txt"
started=$SECONDS

step() {   # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME-GPU.log
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit}s; $((SECONDS - started))s so far)"
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$name-$gpu.log" 2>&1
  echo "   exit $? after $((SECONDS - started))s; tail of $OUT/$name-$gpu.log:"
  tail -n 4 "$OUT/$name-$gpu.log"
}

if [ "$PART" = learn ]; then
  [ -f .carry/vgg.safetensors ] || { echo "no .carry/: run python -m bench.gpu_carry first"; exit 1; }
  # the CPU's settings but 35 s of training: the minute's rest is the trainer's start and the
  # reload
  PERCEPTUAL_DATA=$PWD/.carry/data SERVICE_LEARN_TIME_LIMIT_S=35 \
    SERVICE_LEARN_EXTRA_ARGS="--vgg-weights $PWD/.carry/vgg.safetensors" \
    step learn 220 "$PY" -m bench live --only learn --device cuda --settle-s 5 \
    --out "$OUT/live-learn-cuda-$gpu.json"
  echo "== done in $((SECONDS - started))s; results in $OUT"
  exit 0
fi

step cuda-tests 75 "$PY" -m pytest -q -p no:cacheprovider -x tests/service/test_service_cuda.py \
  tests/service/test_service_graphs.py tests/service/test_service_staging.py
paths=$("$PY" -c "from service.execution import cuda_paths as p; print(','.join(['eager_fp32', *p('auto')]))")
step model 120 "$PY" -m bench model --device cuda --networks style,sr_x8 --sizes 256,1024 \
  --batches 1,8,64 --max-batch-pixels 8388608 --paths "$paths" --min-s 0.2 --max-runs 200 \
  --out "$OUT/model-cuda-$gpu.json"
step service 170 "$PY" -m bench service --device cuda --configs measured,no_batching \
  --concurrency 1,4,16,64 --mixed 256,512,1024 --duration-s 3 --warmup-s 1 --rounds 1 \
  --raw-min-s 0.5 --pairs 20 --out "$OUT/service-cuda-$gpu.json"
step sr-x8 60 "$PY" -m bench service --device cuda --model sr_x8 --size 128 --configs measured \
  --concurrency 8 --mixed '' --duration-s 4 --warmup-s 1 --rounds 1 --raw-min-s 0.5 --pairs 10 \
  --out "$OUT/service-cuda-$gpu-sr_x8.json"
step styles 60 "$PY" -m bench styles --device cuda --configs multistyle,blends \
  --concurrency 1,16,64 --duration-s 3 --warmup-s 1 --out "$OUT/styles-cuda-$gpu.json"
echo "== done in $((SECONDS - started))s; results in $OUT"
