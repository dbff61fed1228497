#!/usr/bin/env bash
# Twenty-second session: where an ERL collect's wall time goes by how many rows its engine steps
# decode (its wide steps against its tail of few rows), beside RLVR's, and the host profile of each.
# Needs /tmp/smollm2 (GGUF_PARTS=4 source scripts/device_prepare.sh) except `tests`.
#   tests        the engine's GPU tests (erl.rollout.* on CUDA)
#   tl_erl / tl_rlvr    benchmarks/rollout.py --workload erl --timeline: two engines' collects (the
#                first pays the warm-up), each split by rows a step
#   prof_erl / prof_rlvr  the same with cProfile over the second collect
#   calls_erl / calls_rlvr  the same with --timeline and $CALLS timed in the collects (rollout.py --time-calls)
#   step[N]      benchmarks/local_step.py (ERL / RLVR side by side); N: names for repeated runs
#   base_step[N] the same on the session's starting commit f330501 (git archive, carried as .ovl/base22.tar
#                and unpacked into /tmp/base22), for runs alternating with the above
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/collect_tail}
source docs/gpu/run_part.sh  # $OUT made; gpu=(...); run NAME LIMIT COMMAND...; collect; local_step; in_base
rlvr=(--set erl.mode=rlvr)
calls=${CALLS:-_decode_step,_admit,_prefill,_deliver,_sampled,_finish,net.forward,graphs._record,erl.rollout.decoding:sample,erl.rollout.decoding:to_device,erl.rollout.admission:plan_sharing,erl.rollout.prefix:prefix_lengths}
for what in "$@"; do
  case $what in
    tests) gpu_tests ;;
    tl_erl) collect tl_erl --engines engine,engine --timeline ;;
    tl_rlvr) collect tl_rlvr "${rlvr[@]}" --engines engine,engine --timeline ;;
    prof_erl) collect prof_erl --engines engine,engine --profile-host collect ;;
    prof_rlvr) collect prof_rlvr "${rlvr[@]}" --engines engine,engine --profile-host collect ;;
    calls_erl) collect calls_erl --engines engine,engine --timeline --time-calls "$calls" ;;
    calls_rlvr) collect calls_rlvr "${rlvr[@]}" --engines engine,engine --timeline --time-calls "$calls" ;;
    base_step*) in_base .ovl/base22.tar local_step "$what" ;;
    step*) local_step "$what" ;;
    *) echo "unknown part $what" | tee -a "$OUT/run.log" ;;
  esac
done
