#!/usr/bin/env bash
# Twenty-first session: the engine's split of the trainer's own ERL and RLVR steps (the step
# metrics time/rollout_prefill, _decode, _gpu_wait, _engine), and the GPU's time in one collect of
# each. Needs /tmp/smollm2 (GGUF_PARTS=4 source scripts/device_prepare.sh) except `tests`, `kernels`.
#   cuda_erl / cuda_rlvr  benchmarks/rollout.py --workload erl, torch.profiler over the second engine's
#                collect: GPU time by op, engine.prefill and engine.decode among them
#   stepreg      benchmarks/local_step.py with trainer.rollout_regions=true (erl.rollout.regions)
#   stepregflex  the same with trainer.rollout_decode_attention=flex too (stepreg2, stepregflex2: again)
#   step2, step3 ...  the step part again (names for runs alternating with the above)
#   prof_regflex the erl part (cProfile over a collect) with regions and flex
#   other parts (tests, kernels, step, stepflex, erl, rlvr, ...) go to ../host_split/run.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/step_split}
source docs/gpu/run_part.sh  # $OUT made; gpu=(...); run NAME LIMIT COMMAND...
for what in "$@"; do
  case $what in
    cuda_erl) run cuda_erl 200 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" --engines engine,engine \
                --profile-cuda collect ;;
    cuda_rlvr) run cuda_rlvr 200 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" --set erl.mode=rlvr \
                 --engines engine,engine --profile-cuda collect ;;
    stepreg*) extra=(); [[ $what == stepregflex* ]] && extra=(--set trainer.rollout_decode_attention=flex)
              run "$what" 400 python3 benchmarks/local_step.py "${gpu[@]}" --set trainer.rollout_regions=true "${extra[@]}" \
                --warmup "${WARMUP:-2}" --steps "${STEPS:-3}" ;;
    prof_regflex) run prof_regflex 200 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" --engines engine,engine \
                    --set trainer.rollout_regions=true --set trainer.rollout_decode_attention=flex --profile-host collect ;;
    step[0-9]) run "$what" 240 python3 benchmarks/local_step.py "${gpu[@]}" --warmup "${WARMUP:-2}" --steps "${STEPS:-3}" ;;
    *) OUT=$OUT bash docs/gpu/host_split/run.sh "$what" ;;
  esac
done
