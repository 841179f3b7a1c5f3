#!/usr/bin/env bash
# The GPU figures of issue 19 in one run (< 8 min on one recent GPU): peak fp32/bf16 GFLOP/s, the sampling
# speed levers (fp32 eager, bf16, channels-last, compiled, combinations) at toy, toy64-ade and the paper
# config, and a training step fp32 vs bf16. For a session that is lent a GPU; nothing else relies on it.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # figures (*.txt, *.json) go to OUT_DIR (default /tmp/gpu_check)
#
# Each part has its own time limit so one slow part cannot eat the others' time.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/gpu_check}"
mkdir -p "$OUT"
PY="${PY:-.venv/bin/python}"
export NO_ALBUMENTATIONS_UPDATE=1 DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (torch ' + torch.__version__ + ')')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true

run() {  # run LIMIT_S NAME CMD...: one part, its output teed to OUT/NAME.txt; a timeout is reported, not fatal
  local limit=$1 name=$2; shift 2
  echo "== $name (limit ${limit}s)"
  if ! timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"; then echo "!! $name failed or passed ${limit}s" | tee -a "$OUT/$name.txt"; fi
}

run 60 peak "$PY" benchmarks/peak.py --device cuda --repeats 20 --json "$OUT/peak.json"
run 300 sampling "$PY" benchmarks/sampling.py --device cuda --configs toy,toy64-ade,ade20k --batch 4 \
  --variants fp32,bf16,channels-last,compiled,bf16+channels-last,bf16+compiled,bf16+channels-last+compiled \
  --variant-configs toy,toy64-ade,ade20k --full "" --repeats 3 --steps-measured 3 \
  --peak-json "$OUT/peak.json" --json "$OUT/sampling.json"
run 100 train "$PY" benchmarks/train.py --config all --device cuda --workers 1 --precision fp32,bf16 \
  --steps 8 --warmup 2 --checkpointing
echo "gpu_check: figures in $OUT"
