#!/usr/bin/env bash
# Twenty-first session: the engine's split of the trainer's own ERL and RLVR steps (the step
# metrics time/rollout_prefill, _decode, _gpu_wait, _engine), and the GPU's time in one collect of
# each. Needs /tmp/smollm2 (GGUF_PARTS=4 source scripts/device_prepare.sh) except `tests`, `kernels`.
#   cuda_erl / cuda_rlvr  benchmarks/rollout.py --workload erl, torch.profiler over the second engine's
#                collect: GPU time by op, engine.prefill and engine.decode among them
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
    *) OUT=$OUT bash docs/gpu/host_split/run.sh "$what" ;;
  esac
done
