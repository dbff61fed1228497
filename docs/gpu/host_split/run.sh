#!/usr/bin/env bash
# Twentieth session: where the host's time goes in an ERL collect and in an RLVR collect, at the
# same commit. Needs /tmp/smollm2 (GGUF_PARTS=4 source scripts/device_prepare.sh) except `tests`.
#   erl / rlvr   benchmarks/rollout.py --workload erl: the engine's split of one eval and two
#                collects (the first pays the warm-up), cProfile over the second collect
#   step         benchmarks/local_step.py, preset=gpu (ERL / RLVR side by side)
#   step1        the same with the tokenizer on one thread (TOKENIZERS_PARALLELISM=false, as the
#                nineteenth session's device calls ran it: scripts/device_prepare.sh sets it)
#   stepflex     the same as step with trainer.rollout_decode_attention=flex (erl.rollout.flex)
#   ab_erl / ab_rlvr  benchmarks/rollout.py --workload erl, the engines of $ENGINES in turn in one process
#                (default: without and with the fused projections and norms, twice)
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
    ab_erl) run ab_erl 240 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" \
              --engines "${ENGINES:-engine+fused=0,engine,engine+fused=0,engine}" ;;
    ab_rlvr) run ab_rlvr 240 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" --set erl.mode=rlvr \
               --engines "${ENGINES:-engine+fused=0,engine,engine+fused=0,engine}" ;;
    step) run step 240 python3 benchmarks/local_step.py "${gpu[@]}" --warmup "${WARMUP:-2}" --steps "${STEPS:-3}" ;;
    step1) TOKENIZERS_PARALLELISM=false run step_one_thread 240 python3 benchmarks/local_step.py "${gpu[@]}" \
             --warmup "${WARMUP:-2}" --steps "${STEPS:-3}" ;;
    stepflex) run step_flex 300 python3 benchmarks/local_step.py "${gpu[@]}" --set trainer.rollout_decode_attention=flex \
                --warmup "${WARMUP:-2}" --steps "${STEPS:-3}" ;;
    *) OUT=$OUT bash docs/gpu/decode_kernels/run.sh "$what" ;;
  esac
done
