#!/usr/bin/env bash
# Twenty-fourth session, 2 x H200 (device kind nvidia-h200-x2): issue 11's two-GPU part with the users'
# scripts at the one-GPU scale config (+scale=small_gpu: 64 tasks a step, ERL n=8, RLVR 16 first attempts):
#   erl2    scripts/frozenlake_erl.sh on 2 GPUs, 20 steps, a checkpoint every 5 (the resume's original)
#   resume  scripts/verl_resume_check.sh PHASE=resumed and PHASE=control side by side, both from erl2's
#           step-10 checkpoint on 2 GPUs, then PHASE=compare (step 11 against erl2's)
#   rlvr2   scripts/frozenlake_rlvr.sh on 2 GPUs, 20 steps
#   t1      the same two scripts on 1 GPU each (ERL on GPU 0, RLVR on GPU 1 at the same time), T1_STEPS
#           steps: t1 for the scaling efficiency t1 / (2 t2)
#   recheck (STAGES=recheck, after the engine reset) scripts/verl_resume_check.sh on RECHECK_GPUS (2)
#           GPUs: original RECHECK_AT+1 steps with a checkpoint at RECHECK_AT, then resumed and
#           control side by side, then compare
# A queue: every call runs the stages not yet done, in that order, while BUDGET seconds last; a run cut
# off resumes from its last checkpoint in the next call (the machine's /tmp survives while it is warm),
# so the calls after the model's transfer are all the same command. Needs /tmp/smollm2 and the verl
# overlay (GGUF_PARTS=4 source scripts/device_prepare.sh). Logs and metrics: /tmp/g2, packed into
# $OUT/g2.tgz at the end of every call.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/gpu2_scaling}
mkdir -p "$OUT" /tmp/g2/logs
BUDGET=${BUDGET:-540}
T1_STEPS=${T1_STEPS:-6}
deadline=$((SECONDS + BUDGET))
# NVLink multicast stays off on a shared host (the device's KINDS.md); Ray's workers inherit these
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export MODEL_PATH=/tmp/smollm2 ROLLOUT=hf
# small_gpu already holds the device's settings (sdpa, no remove-padding, no torch.compile)
scale=(+scale=small_gpu +env.params.size_max=3 +env.params.max_turns=4)
log() { echo "== $(date +%T) $*" | tee -a /tmp/g2/logs/run.log; }
left() { echo $((deadline - SECONDS)); }
# launch NAME GPUS EXPERIMENT DIR STEPS [overrides]: the users' launcher, cut off by SIGINT at the deadline
launch() {
  local name=$1 gpus=$2 exp=$3 dir=$4 steps=$5; shift 5
  log "$name: $exp on $gpus GPU(s), $steps steps, $(left) s left"
  EXPERIMENT=$exp N_GPUS_PER_NODE=$gpus timeout -s INT -k 30 "$(($(left) - 20))" bash scripts/launch_verl.sh \
    "${scale[@]}" "trainer.total_training_steps=$steps" "trainer.default_local_dir=$dir" "$@" \
    >> "/tmp/g2/logs/$name.log" 2>&1
  local rc=$?; log "$name: exit $rc"; return $rc
}
twenty=(trainer.save_freq=5 trainer.max_actor_ckpt_to_keep=null trainer.test_freq=20 trainer.resume_mode=auto)
# resumed_and_control LABEL PREFIX VAR=VALUE...: scripts/verl_resume_check.sh's phases resumed and control side
# by side (its variables, CHECK_DIR ...), then compare; logs /tmp/g2/logs/PREFIX{resumed,control}.log, PREFIXcompare.txt
resumed_and_control() {
  local label=$1 prefix=$2 phase pids=(); shift 2
  for phase in resumed control; do
    env PHASE=$phase "$@" timeout -s INT -k 30 "$(($(left) - 20))" bash scripts/verl_resume_check.sh "${scale[@]}" \
      >> "/tmp/g2/logs/$prefix$phase.log" 2>&1 &
    pids+=($!)
  done
  log "$label: resumed and control started"; wait "${pids[@]}"
  env PHASE=compare "$@" bash scripts/verl_resume_check.sh > "/tmp/g2/logs/${prefix}compare.txt" 2>&1
  log "$label: compare exit $? ($(tail -1 "/tmp/g2/logs/${prefix}compare.txt"))"
}
stage() { [ -f "/tmp/g2/done_$1" ] && return 1; [ "$(left)" -gt "$2" ] || { log "$1: $(left) s left, not started"; return 1; }; }

# a run cut off by the last call's end can leave Ray's own processes behind, holding GPU memory
pkill -9 -f 'raylet|gcs_server|ray::|default_worker.py' 2>/dev/null && sleep 3
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader >> /tmp/g2/logs/run.log
env | grep -E '^(NCCL_NVLS|TORCH_SYMM|NVSHMEM_DISABLE)' >> /tmp/g2/logs/run.log
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -l 5 \
  >> /tmp/g2/logs/smi.log 2>&1 &
smi=$!

STAGES=${STAGES:-erl2 resume rlvr2 t1}
want() { [[ " $STAGES " == *" $1 "* ]]; }
if want recheck && stage recheck 150; then
  rc=(CHECK_DIR=/tmp/g2/recheck "N_GPUS_PER_NODE=${RECHECK_GPUS:-2}" "SAVE_AT=${RECHECK_AT:-4}")
  log "recheck: original"
  env PHASE=original "${rc[@]}" timeout -s INT -k 30 "$(($(left) - 20))" bash scripts/verl_resume_check.sh \
    "${scale[@]}" >> /tmp/g2/logs/recheck_original.log 2>&1
  resumed_and_control recheck recheck_ "${rc[@]}"
  cp /tmp/g2/logs/recheck_compare.txt "$OUT/"
fi
if want erl2 && stage erl2 200; then
  launch erl2 2 frozenlake_erl /tmp/g2/rc/original 20 "${twenty[@]}" && touch /tmp/g2/done_erl2
fi
if want resume && [ -f /tmp/g2/done_erl2 ] && stage resume 220; then
  resumed_and_control resume "" CHECK_DIR=/tmp/g2/rc N_GPUS_PER_NODE=2 SAVE_AT=10
  [ -f /tmp/g2/rc/control/metrics.jsonl ] && touch /tmp/g2/done_resume
fi
if want rlvr2 && stage rlvr2 200; then
  launch rlvr2 2 frozenlake_rlvr /tmp/g2/rlvr2 20 "${twenty[@]}" && touch /tmp/g2/done_rlvr2
fi
if want t1 && stage t1 240; then
  one=(trainer.val_before_train=false trainer.test_freq=-1 trainer.save_freq=-1 trainer.resume_mode=disable)
  (export CUDA_VISIBLE_DEVICES=0; launch t1_erl 1 frozenlake_erl /tmp/g2/t1_erl "$T1_STEPS" "${one[@]}") & a=$!
  (export CUDA_VISIBLE_DEVICES=1; launch t1_rlvr 1 frozenlake_rlvr /tmp/g2/t1_rlvr "$T1_STEPS" "${one[@]}") & b=$!
  wait "$a" "$b"
  [ -f /tmp/g2/t1_erl/metrics.jsonl ] && [ -f /tmp/g2/t1_rlvr/metrics.jsonl ] && touch /tmp/g2/done_t1
fi
kill "$smi" 2>/dev/null
log "stages done: $(cd /tmp/g2 && ls done_* 2>/dev/null | tr '\n' ' ')"
# metrics, configs and logs (not the checkpoints or the episodes' texts) of everything so far
(cd /tmp/g2 && find . -path ./logs -prune -o \( -name metrics.jsonl -o -name config.yaml -o -name curves.png \
  -o -name 'done_*' \) -print | tar -czf "$OUT/g2.tgz" logs -T -)
cp /tmp/g2/logs/run.log "$OUT/run.log"
