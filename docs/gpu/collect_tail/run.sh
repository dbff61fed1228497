#!/usr/bin/env bash
# Twenty-second session: where an ERL collect's wall time goes by how many rows its engine steps
# decode (its wide steps against its tail of few rows), beside RLVR's, and the host profile of each.
# Needs /tmp/smollm2 (GGUF_PARTS=4 source scripts/device_prepare.sh) except `tests`.
#   tests        the engine's GPU tests (erl.rollout.* on CUDA)
#   tl_erl / tl_rlvr    benchmarks/rollout.py --workload erl --timeline: two engines' collects (the
#                first pays the warm-up), each split by rows a step
#   prof_erl / prof_rlvr  the same with cProfile over the second collect
#   step[N]      benchmarks/local_step.py (ERL / RLVR side by side); N: names for repeated runs
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/collect_tail}
source docs/gpu/run_part.sh  # $OUT made; gpu=(...); run NAME LIMIT COMMAND...
rlvr=(--set erl.mode=rlvr)
for what in "$@"; do
  case $what in
    tests) gpu_tests ;;
    tl_erl) run tl_erl 200 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" --engines engine,engine --timeline ;;
    tl_rlvr) run tl_rlvr 200 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" "${rlvr[@]}" --engines engine,engine --timeline ;;
    prof_erl) run prof_erl 200 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" --engines engine,engine --profile-host collect ;;
    prof_rlvr) run prof_rlvr 200 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" "${rlvr[@]}" --engines engine,engine --profile-host collect ;;
    step*) run "$what" 300 python3 benchmarks/local_step.py "${gpu[@]}" --warmup "${WARMUP:-2}" --steps "${STEPS:-3}" ;;
    *) echo "unknown part $what" | tee -a "$OUT/run.log" ;;
  esac
done
