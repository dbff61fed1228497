#!/usr/bin/env bash
# Nineteenth session: where a decode step's GPU time goes, and candidates that shorten it.
# No model needed (random SmolLM2-135M weights). Parts:
#   tests    the GPU tests (pytest -m gpu)
#   kernels  benchmarks/slot_forward.py: every variant, with its kernels by GPU time
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/decode_kernels}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
run() {  # run NAME LIMIT COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T)): $*" | tee -a "$OUT/run.log"
  PYTHONPATH=$PWD:/tmp/ov/site timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?; echo "   exit $rc" | tee -a "$OUT/run.log"; return $rc
}
for what in "$@"; do
  case $what in
    tests) run gpu_tests 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_rollout_engine.py \
             tests/test_rollout_graphs.py || { echo "GPU tests failed: the rest is not run" | tee -a "$OUT/run.log"; exit 1; } ;;
    kernels) run slot_forward 300 python3 benchmarks/slot_forward.py ${VARIANTS:+--variants "$VARIANTS"} ;;
    *) echo "unknown part $what" | tee -a "$OUT/run.log" ;;
  esac
done
