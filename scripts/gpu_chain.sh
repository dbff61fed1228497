#!/usr/bin/env bash
# Several local-trainer runs side by side on one GPU, each stopping cleanly inside a time budget
# and resuming from its last checkpoint when the script is called again: a run of any length as a
# chain of device calls of <= 10 minutes (docs/gpu/README.md).
#
#   RUNS="erl:0 erl:1 rlvr:0 rlvr:1" ENV=frozenlake BUDGET=480 RUN_ROOT=/tmp/runs \
#     bash scripts/gpu_chain.sh model.path=/tmp/smollm2 [more overrides]
#
# RUNS: mode:seed pairs (mode: erl | rlvr | no_memory | no_reflection). Every run gets preset=gpu,
# its own output folder $RUN_ROOT/$ENV-$mode-s$seed, and resume=true once it has a checkpoint.
# BUDGET (s) counts from each process's start (model loading and evals included). When $OUT is
# set (the device tool), the metrics, logs and non-finite reports are packed into $OUT/runs.tgz.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-"erl:0 rlvr:0"}
ENV=${ENV:-frozenlake}
BUDGET=${BUDGET:-480}
RUN_ROOT=${RUN_ROOT:-$ROOT/outputs/chain}
PY=${PY:-python3}
mkdir -p "$RUN_ROOT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

pids=()
for run in $RUNS; do
  mode=${run%%:*}; seed=${run##*:}
  out="$RUN_ROOT/$ENV-$mode-s$seed"
  resume=false
  # A folder that holds a run resumes it: from its last checkpoint, or from step 0 when it crashed
  # before the first one (erl-train refuses resume=false there, to protect finished runs).
  [ -f "$out/config.json" ] && resume=true
  echo "[chain] $out resume=$resume budget=${BUDGET}s"
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m erl.cli.train preset=gpu env="$ENV" erl.mode="$mode" \
    seed="$seed" trainer.output_dir="$out" trainer.time_budget_s="$BUDGET" trainer.progress=false \
    resume="$resume" "$@" >> "$RUN_ROOT/$ENV-$mode-s$seed.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
for run in $RUNS; do
  mode=${run%%:*}; seed=${run##*:}
  echo "[chain] $ENV-$mode-s$seed: $(tail -n 1 "$RUN_ROOT/$ENV-$mode-s$seed.log")"
done
if [ -n "${OUT:-}" ]; then
  (cd "$RUN_ROOT" && tar -czf "$OUT/runs.tgz" --exclude='checkpoints' --exclude='tensorboard' .)
fi
exit $rc
