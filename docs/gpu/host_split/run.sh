#!/usr/bin/env bash
# Twentieth session: where the host's time goes in an ERL collect and in an RLVR collect, at the
# same commit. Needs /tmp/smollm2 (GGUF_PARTS=4 source scripts/device_prepare.sh) except `tests`.
#   erl / rlvr   benchmarks/rollout.py --workload erl: the engine's split of one eval and two
#                collects (the first pays the warm-up), cProfile over the second collect
#   step         benchmarks/local_step.py, preset=gpu (ERL / RLVR side by side)
#   other parts (tests, kernels, stepc) go to ../decode_kernels/run.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/host_split}
source docs/gpu/run_part.sh  # $OUT made; gpu=(...); run NAME LIMIT COMMAND...
for what in "$@"; do
  case $what in
    erl) run workload_erl 200 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" --engines engine,engine \
           --profile-host collect ;;
    rlvr) run workload_rlvr 200 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" --set erl.mode=rlvr \
            --engines engine,engine --profile-host collect ;;
    step) run step 240 python3 benchmarks/local_step.py "${gpu[@]}" --warmup "${WARMUP:-2}" --steps "${STEPS:-3}" ;;
    *) OUT=$OUT bash docs/gpu/decode_kernels/run.sh "$what" ;;
  esac
done
