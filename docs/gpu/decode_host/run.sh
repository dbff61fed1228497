#!/usr/bin/env bash
# Twenty-third session: a decode step's and a packed prefill's host cost, ERL against RLVR.
# Needs /tmp/smollm2 (GGUF_PARTS=4 source scripts/device_prepare.sh) except `tests`, `slot`, `episodes`.
#   tests        the engine's GPU tests (erl.rollout.* on CUDA)
#   slot         benchmarks/slot_forward.py, regions + flex, with one packed prefill of an ERL
#                collect's size traced (is the host waiting for the GPU while it queues a prefill?)
#   episodes     benchmarks/episode_code.py: the episodes' own code on this machine's CPU
#   calls_erl / calls_rlvr  benchmarks/rollout.py --timeline --time-calls "$CALLS" (two engines' collects)
#   steps_erl    calls_erl with one line per engine step (--timeline-steps)
#   base_calls_erl  calls_erl on the session's starting commit
#   wsteps_erl / wsteps_rlvr  steps_erl with the engine's admit_wait=$WAIT (default 32)
#   slotflex     slot with the regions + flex variant only (its packed prefill in both attention kernels)
#   fstep[N]     step[N] with packed prefills' attention in the memory-efficient kernel (flash_prefill off)
#                (slotflex and fstep need 2fc8e29's tree: FlashAttention-2 prefills, reverted after call 8)
#   wstep[N]     step[N] with the engine's admit_wait=$WAIT (local_step.py --engine-set)
#   step[N]      benchmarks/local_step.py (ERL / RLVR side by side); N: names for repeated runs
#   base_step[N] the same on the session's starting commit (git archive carried as .ovl/base.tar)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/decode_host}
source docs/gpu/run_part.sh  # $OUT made; gpu=(...); run NAME LIMIT COMMAND...; collect; local_step; in_base
rlvr=(--set erl.mode=rlvr)
calls=${CALLS:-_decode_step,_admit,_prefill,_deliver,_sampled,net.forward,erl.rollout.decoding:sample,erl.rollout.decoding:to_device}
for what in "$@"; do
  case $what in
    tests) gpu_tests ;;
    slot) run slot 300 python3 benchmarks/slot_forward.py --variants "fused regions,regions flex" --packed-trace \
            --prefill-rows 26 --prefill-width 512 --prefill-held 300 --top 25 ;;
    slotflex) run slotflex 300 python3 benchmarks/slot_forward.py --variants "regions flex" --packed-trace \
            --prefill-rows 26 --prefill-width 512 --prefill-held 300 --top 12 ;;
    episodes) run episodes 200 python3 benchmarks/episode_code.py --set model.path=/tmp/smollm2 ;;
    calls_erl) collect calls_erl --engines engine,engine --timeline --time-calls "$calls" ;;
    steps_erl) collect steps_erl --engines engine,engine --timeline-steps --time-calls "$calls" ;;
    wsteps_erl) collect wsteps_erl \
                  --engines "engine+admit_wait=${WAIT:-32},engine+admit_wait=${WAIT:-32}" --timeline-steps ;;
    wsteps_rlvr) collect wsteps_rlvr "${rlvr[@]}" \
                  --engines "engine+admit_wait=${WAIT:-32},engine+admit_wait=${WAIT:-32}" --timeline-steps ;;
    fstep*) local_step "$what" --engine-set net.flash_prefill=0 ;;
    wstep*) local_step "$what" --engine-set "admit_wait=${WAIT:-32}" ;;
    base_calls_erl) in_base .ovl/base.tar collect base_calls_erl \
                      --engines engine,engine --timeline --time-calls "$calls" ;;
    calls_rlvr) collect calls_rlvr "${rlvr[@]}" --engines engine,engine --timeline --time-calls "$calls" ;;
    base_step*) in_base .ovl/base.tar local_step "$what" ;;
    step*) local_step "$what" ;;
    *) echo "unknown part $what" | tee -a "$OUT/run.log" ;;
  esac
done
