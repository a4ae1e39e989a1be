#!/usr/bin/env bash
# The benchmark table on one CUDA machine in under 5 minutes: every row eagerly (bf16 autocast),
# then the largest transformer and CNN with torch.compile (compilation counts as warm-up).
#   bash benchmarks/gpu.sh [OUT]      (default OUT=results/benchmarks/gpu)
# Needs the repository installed with the bench extra: pip install -e '.[bench]'
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/benchmarks/gpu}
PY=${PYTHON:-python}
$PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run python -m benchmarks.run')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# defaults on CUDA: steps of 32k tokens (B x T), 5 warm-up steps, rounds of 10 steps (8 or more
# per cell, at most 20 s of them); the default study at its real size (2M tokens per run)
timeout 200 $PY -m benchmarks.run --out "$OUT/eager" --cell-seconds 20
# torch.compile where it may win: does it pay for itself? (the train and module rows say)
timeout 90 $PY -m benchmarks.run --out "$OUT/compile" --compile --archs transformer cnn --sizes 5000000 \
  --contexts 1024 --warmup 10 --skip fixed default variants eval truncation study \
  || echo "the compiled pass did not finish in 90 s: compilation is too slow to pay off at these sizes"
