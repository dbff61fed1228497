#!/usr/bin/env bash
# Twenty-fifth session, one H200: which phase makes ERL / RLVR rise along a run (the twenty-fourth
# session saw the ratio climb from ~1.5 to ~1.9 over 8 steps). Parts, in the order given:
#   step[N]   benchmarks/local_step.py, 2 warm-up steps then STEPS (14) measured, ERL and RLVR
#             alternating; its per-step lines carry each phase, the engine's seconds, the update's
#             tokens, turns, first-attempt success, the reflection rate and the memory's size
# Needs /tmp/smollm2 (GGUF_PARTS=4 source scripts/device_prepare.sh). Output: $OUT/NAME.txt, .json
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/ratio_rise}
source docs/gpu/run_part.sh  # $OUT made; gpu=(...); run NAME LIMIT COMMAND...; local_step
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader >> "$OUT/run.log"
for what in "$@"; do
  case $what in
    step*) STEPS=${STEPS:-14} local_step "$what" --out "$OUT/$what.json" ;;
    *) echo "unknown part $what" >&2; exit 2 ;;
  esac
done
