# Shared by the sessionN_calls.sh scripts (sourced, not run): the start and the end of one device
# call in which several jobs share the GPU, each <= LIMIT seconds from the call's start.
#   call_begin DIR...    environment, /tmp/runs + DIRs, GPU memory/utilisation log every 15 s;
#                        defines left S: the seconds left that still leave S for one last step
#   ... start jobs in the background, appending their pids to `pids` ...
#   call_end DIR...      wait for the jobs (a watchdog interrupts erl.cli processes at LIMIT + 20),
#                        clean up what a killed verl driver left, pack /tmp/runs + DIRs (no weights,
#                        no checkpoints, of a dataset folder only its manifest.json) into $OUT/runs.tgz
call_begin() {
  LIMIT=${LIMIT:-540}
  START=$SECONDS
  export PYTHONPATH=$PWD:/tmp/ov/site SMOLLM=${SMOLLM:-/tmp/smollm2} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True RAY_AUTH_MODE=disabled HYDRA_FULL_ERROR=1 RAY_DEDUP_LOGS=0
  mkdir -p /tmp/runs "${@/#//tmp/}"
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 15 > /tmp/runs/smi_call$CALL.log 2>&1 &
  SMI=$!
  pids=()
}

left() { echo $(( LIMIT - (SECONDS - START) - $1 )); }

call_end() {
  ( sleep $(( LIMIT + 20 )); pkill -INT -f "erl[.]cli" ) & local dog=$!  # [.]: never matches this shell's own command line
  for p in "${pids[@]}"; do wait "$p"; done
  kill $(pgrep -P $dog) $dog $SMI 2>/dev/null  # the sleep too: it holds the call's output open
  pkill -9 -f "[r]aylet"; pkill -9 -f "[g]cs_server"; pkill -9 -f "ray[:][:]"  # what a killed verl driver left
  nvidia-smi --query-gpu=memory.used --format=csv
  if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/runs.tgz" -C /tmp --exclude=checkpoints --exclude=final --exclude=tensorboard --exclude='global_step_*' \
      --exclude='*.safetensors' --exclude='*.pt' --exclude='data/*.jsonl' --exclude='data/verl' runs "$@"
  fi
  echo "call $CALL done in $((SECONDS - START)) s"
}
