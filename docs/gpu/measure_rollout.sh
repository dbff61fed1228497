#!/usr/bin/env bash
# Issue 11's measurements on a quiet GPU (nothing else running: the eighth session's benchmark,
# squeezed beside four training runs, printed one line), each part under its own time limit,
# raw output into $OUT (the device tool brings it back):
#   bash docs/gpu/measure_rollout.sh [PART...]     # default: all parts, ~10 minutes in all
# Parts:
#   bench      benchmarks/rollout.py: the engine eager and with CUDA graphs (log-prob error against
#              a teacher-forced pass), plain and static-cache compiled `generate`, batch 512 x 64 new tokens
#   bench_compiled  the engine compiled (reduce-overhead, with and without eager's precision casts)
#   workload   the local trainer's eval + one ERL collect at preset=gpu: the engine eager, with CUDA
#              graphs (the default), admitting in larger batches, without KV lent between slots
#   profile    the engine's collect of the same workload under torch.profiler: GPU time by kernel, and
#              the engine's split of its time (decode, prefill, admission planning)
#   step       benchmarks/local_step.py: ERL / RLVR step time side by side at preset=gpu (1 warm-up + 2 steps)
#   step_graph the same with trainer.rollout_compile=reduce-overhead (CUDA graphs in the decode)
#   ceiling    the engine's generated tokens/s inside the trainer's ERL collect at preset=gpu against
#              static-cache compiled `generate` on the same requests (one compiled shape), batches of 512
#   update     benchmarks/update_batches.py: one ERL step's update at several micro-batch settings, and
#              a cProfile of its collect (the host's split of a rollout)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONPATH=$PWD:/tmp/ov/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
SMOLLM=${SMOLLM:-/tmp/smollm2}; OUT=${OUT:-outputs/measure_rollout}; mkdir -p "$OUT"
part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$OUT/measure.log"
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader >> "$OUT/measure.log" 2>&1
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; echo "   exit $?" | tee -a "$OUT/measure.log"
}
for p in ${@:-bench workload step step_graph}; do
  case $p in
    bench) part bench 120 python3 benchmarks/rollout.py --device cuda --batch 512 --new-tokens 64 --skip compiled ;;
    bench_compiled) part bench_compiled 200 python3 benchmarks/rollout.py --device cuda --batch 512 --new-tokens 64 \
                      --skip eager,graphs ;;
    workload) part workload 220 python3 benchmarks/rollout.py --workload erl --set preset=gpu --set model.path="$SMOLLM" \
                --engines ${ENGINES:-engine-eager,engine,engine+admit_ratio=0.5,engine+admit_ratio=1,engine-own} ;;
    profile) part profile 150 python3 benchmarks/rollout.py --workload erl --set preset=gpu \
               --set model.path="$SMOLLM" --engines engine --profile-cuda ${PROFILE_PART:-eval} ;;
    step) part step 200 python3 benchmarks/local_step.py --set preset=gpu --set model.path="$SMOLLM" --warmup 1 --steps 2 ;;
    step_graph) part step_graph 150 python3 benchmarks/local_step.py --set preset=gpu --set model.path="$SMOLLM" \
                  --set trainer.rollout_compile=reduce-overhead --steps 3 ;;
    ceiling) part ceiling 300 python3 benchmarks/rollout.py --workload erl --set preset=gpu --set model.path="$SMOLLM" \
               --engines engine --ceiling --batch 512 ;;
    update) part update 200 python3 benchmarks/update_batches.py --set preset=gpu --set model.path="$SMOLLM" \
              --profile-collect 45 \
              --micro 32:0 128:0 1024:16384 1024:32768 1024:65536 ;;
    *) echo "measure_rollout.sh: unknown part '$p' (bench, bench_compiled, workload, profile, step, step_graph, ceiling, update)" >&2
       exit 2 ;;
  esac
done
