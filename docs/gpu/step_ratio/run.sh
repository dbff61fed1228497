#!/usr/bin/env bash
# Eighteenth session, one device call: parts of issue 11 not measured at the seventeenth session's
# head. Needs /tmp/smollm2 (GGUF_PARTS=4 source scripts/device_prepare.sh). Parts:
#   tests    the GPU tests (pytest -m gpu)
#   update   benchmarks/update_batches.py: one ERL step's rows, cProfile of the collect, update settings
#   ceiling  benchmarks/rollout.py --workload erl --ceiling: the engine inside the collect / static generate
#   bench    benchmarks/rollout.py synthetic, batch 512 x 64: tok/s, static ceiling, log-prob error in bf16
#   step32k  benchmarks/local_step.py with micro-batches of 32,768 padded tokens (the preset: 65,536)
#   other parts (head, base, workload_*) go to ../prefill_overlap/run.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/step_ratio}
source docs/gpu/run_part.sh  # $OUT made; gpu=(...); run NAME LIMIT COMMAND...
for what in "$@"; do
  case $what in
    tests) gpu_tests ;;
    update) run update_batches 240 python3 benchmarks/update_batches.py "${gpu[@]}" --micro 1024:65536 1024:131072 1024:32768 \
              --repeats 2 --profile-collect 45 ;;
    ceiling) run ceiling 240 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" --engines engine --ceiling ;;
    step32k) run step_head_32k 240 python3 benchmarks/local_step.py "${gpu[@]}" --set trainer.micro_batch_tokens=32768 \
               --warmup "${WARMUP:-2}" --steps "${STEPS:-3}" ;;
    bench) run bench 240 python3 benchmarks/rollout.py --model /tmp/smollm2 --batch 512 --new-tokens 64 --skip eager,compiled,dynamic ;;
    *) OUT=$OUT bash docs/gpu/prefill_overlap/run.sh "$what" ;;
  esac
done
