#!/usr/bin/env bash
# The test suite under load: the README's test command, 5 times in a row, each time while a second
# copy of the suite runs beside it on the same cores. Two fresh clones of this repository's HEAD
# (A: the README's copy, B: the second copy) in OUT; round 1 in each is the README's whole test
# block (virtual environment, installs, pytest), rounds 2-5 its pytest command again; both copies
# of a round start together and the next round waits for both. Writes OUT/rounds.log (each copy's
# exit status, seconds and pytest's last line) and OUT/<copy>-round<N>.out.
#
#   bash benchmarks/suite_beside_itself.sh [OUT] [ROUNDS]      (default /tmp/suite-beside-itself, 5)
#
# For the PostgreSQL case of tests/test_workers.py set MNEMOSCOPE_TEST_POSTGRES as .ci/run does.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-/tmp/suite-beside-itself}
ROUNDS=${2:-5}
LOG=$OUT/rounds.log
mkdir -p "$OUT" && rm -rf "$OUT/A" "$OUT/B"
git clone -q "$REPO" "$OUT/A" && git clone -q "$REPO" "$OUT/B" || exit 1
readme_block() {  # the bash block after <!-- ci:NAME --> in README.md, as .ci/run reads it
  awk -v m="<!-- ci:$1 -->" '$0==m{f=1;next} f&&/^```bash/{g=1;next} g&&/^```/{exit} g{print}' README.md
}
echo "commit $(git -C "$OUT/A" rev-parse --short HEAD), $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" > "$LOG"
trap 'kill 0' INT TERM  # a stop takes both copies' processes with it
for round in $(seq 1 "$ROUNDS"); do
  for copy in A B; do
    (cd "$OUT/$copy" || exit 1
     if [ "$round" = 1 ]; then cmd=$(readme_block test); else cmd=".venv/bin/python -m pytest -n auto --dist loadfile"; fi
     export MNEMOSCOPE_CACHE="$OUT/$copy/.ci-cache"
     t0=$(date +%s); bash -c "$cmd" > "$OUT/$copy-round$round.out" 2>&1; rc=$?; t1=$(date +%s)
     echo "round $round copy $copy rc=$rc seconds=$((t1 - t0)) $(tail -n 1 "$OUT/$copy-round$round.out" | tr -d '=')" >> "$LOG") &
  done
  wait
done
echo "done $(date -u +%FT%TZ)" >> "$LOG"
cat "$LOG"
