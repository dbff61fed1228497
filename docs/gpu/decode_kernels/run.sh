#!/usr/bin/env bash
# Nineteenth session: where a decode step's GPU time goes, and candidates that shorten it.
# No model needed (random SmolLM2-135M weights). Parts:
#   tests    the GPU tests (pytest -m gpu)
#   kernels  benchmarks/slot_forward.py: every variant, with its kernels by GPU time
#   step     benchmarks/local_step.py, preset=gpu (needs /tmp/smollm2: scripts/device_prepare.sh)
#   stepc    the same with trainer.rollout_compile=true (call6 ran it at f6fd96c: the compiled decode in
#            the engine's graphs, reverted since; on main it is the older compiled path, dense rows)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/decode_kernels}
source docs/gpu/run_part.sh  # $OUT made; gpu=(...); run NAME LIMIT COMMAND...
for what in "$@"; do
  case $what in
    tests) gpu_tests || { echo "GPU tests failed: the rest is not run" | tee -a "$OUT/run.log"; exit 1; } ;;
    kernels) run slot_forward 300 python3 benchmarks/slot_forward.py ${VARIANTS:+--variants "$VARIANTS"} ;;
    step) run step 240 python3 benchmarks/local_step.py "${gpu[@]}" --warmup "${WARMUP:-2}" --steps "${STEPS:-3}" ;;
    stepc) run step_compiled 420 python3 benchmarks/local_step.py "${gpu[@]}" --set trainer.rollout_compile=true \
             --warmup "${WARMUP:-2}" --steps "${STEPS:-3}" ;;
    *) echo "unknown part $what" | tee -a "$OUT/run.log" ;;
  esac
done
