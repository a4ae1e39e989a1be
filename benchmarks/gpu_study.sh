#!/usr/bin/env bash
# The reference study in tokens at the scale where Kaplan et al. saw LSTMs plateau, in one command
# on one CUDA GPU (sized for an H200 in bf16, under 8 minutes): a 20M-parameter transformer and
# LSTM, context 1024 BPE tokens, 200M training tokens each, on C source, then the analysis
# (effective context by truncation, power-law fits, scoring to 4x the context in buckets), with the
# context use through training: 10 kept steps per run (per-position loss, in-context learning score,
# weights; then the effective context at each and its law C(D) = a D^g) and a mid-run checkpoint
# every 2 minutes, so a run stopped by the time limit or a preemption resumes where it stopped.
#
#   bash benchmarks/gpu_study.sh [OUT]          default OUT=results/gpu-study
#   TINY=1 CORPUS=DIR bash benchmarks/gpu_study.sh OUT
#                                               the same pipeline at CPU scale in seconds (the tests)
#
# Corpus: CORPUS=DIR (any folder of text files, each a document), or else the C source of Debian's
# linux-source package (`apt-get install linux-source`: a 139 MB .tar.xz in /usr/src), whose .c and
# .h files outside drivers/ and all arch/ but x86 (about 300 MB of C) are unpacked once under
# $MNEMOSCOPE_CACHE/linux-c. Nothing is downloaded by this script.
# The SSM is left out on the GPU: its scan is pure PyTorch and would take most of the budget alone.
# Not yet run on a GPU: its sizes are estimates (FLOPs x a 30-40% bf16 utilisation).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu-study}
PY=${PYTHON:-python}
CACHE=${MNEMOSCOPE_CACHE:-$HOME/.cache/mnemoscope}

if [ "${TINY:-0}" = 1 ]; then
  [ -n "${CORPUS:-}" ] || { echo "TINY=1 needs CORPUS=DIR (a small folder of text files)"; exit 2; }
  ARCHS="transformer lstm"; SIZE=20k; CONTEXT=32; TOKENS=20k; BATCH=8; BPE=300; EVAL=8; TARGETS=16; LIMIT=600
  HISTORY=6; EVERY=1s
else
  $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: TINY=1 runs this at CPU scale')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  ARCHS="transformer lstm"; SIZE=20M; CONTEXT=1024; TOKENS=200M; BATCH=64; BPE=8192; EVAL=512; TARGETS=256; LIMIT=420
  HISTORY=10; EVERY=2m
  if [ -z "${CORPUS:-}" ]; then
    CORPUS="$CACHE/linux-c"
    if [ ! -d "$CORPUS" ]; then
      TAR=$(ls /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -1 || true)
      [ -n "$TAR" ] || { echo "no corpus: apt-get install linux-source (or give CORPUS=DIR)"; exit 2; }
      mkdir -p "$CORPUS.tmp"
      tar -xJf "$TAR" -C "$CORPUS.tmp" --wildcards --exclude='*/drivers/*' --exclude='*/Documentation/*' \
        --exclude='*/tools/*' --exclude='*/samples/*' '*.c' '*.h'
      find "$CORPUS.tmp" -path '*/arch/*' -not -path '*/arch/x86/*' -type f -delete
      find "$CORPUS.tmp" -type f -empty -delete
      mv "$CORPUS.tmp" "$CORPUS"
    fi
  fi
fi
echo "corpus: $CORPUS ($(du -sh "$CORPUS" | cut -f1))"
TASK="text:source=$CORPUS,bpe=$BPE,windows=document"
# the study, then the analysis: truncation (the anchors' effective context), fits, 2x and 4x context
timeout "$LIMIT" $PY study.py --arch $ARCHS --task "$TASK" --params $SIZE --context $CONTEXT --tokens $TOKENS \
  --batch-size $BATCH --eval-sequences $EVAL --seeds 0 --history $HISTORY --checkpoint-every $EVERY \
  --no-analysis --no-progress --out "$OUT"
# the final analysis and, from the kept weights, the effective context at every kept step and its law
$PY study.py analyze "$OUT" --variants truncate --targets $TARGETS
echo "done: $OUT/report.html (rerun the same command to resume an interrupted study from its checkpoints)"
