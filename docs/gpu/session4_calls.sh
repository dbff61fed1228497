#!/usr/bin/env bash
# The device calls that made this folder's runs (one H200), each <= 10 minutes, resuming from the
# checkpoints left on the machine's /tmp by the call before (docs/gpu/README.md):
#   bash docs/gpu/session4_calls.sh N        # N = 1, 2, 3; SMOLLM: the converted model folder
# ENGINE=0 / ARMS=0 leave out the engine run / the RL arms.
# - Sokoban ERL seeds 0 and 2 (preset=gpu, max_moves=4: the settings of ../sokoban_seeds);
# - FrozenLake ERL seed 0 with the rollout engine (trainer.rollout_engine=engine), ENGINE=1;
# - Early Experience on FrozenLake: scripts/early_compare.sh (data, IL / IWM->IL / SR, greedy eval
#   of each), then IL -> ERL and SR -> ERL (scripts/early_erl.sh, preset=gpu).
# Everything but checkpoints and weights is packed into $OUT/runs.tgz at the end.
set -uo pipefail
CALL=${1:?usage: calls.sh N}
LIMIT=${LIMIT:-540}  # s from this script's start by which every run has stopped. The first call also
                     # converted the model before it: at 540 it passed the 600 s call limit and its tar was
                     # lost (a short follow-up call packed /tmp), so give a first call ~480.
START=$SECONDS
export PYTHONPATH=$PWD:/tmp/ov/site SMOLLM=${SMOLLM:-/tmp/smollm2} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
mkdir -p /tmp/runs /tmp/early
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 15 > /tmp/runs/smi_call$CALL.log 2>&1 &
SMI=$!
left() { echo $(( LIMIT - (SECONDS - START) - $1 )); }  # the budget that leaves one step ($1 s) to finish

pids=()
OUT= RUNS="erl:0 erl:2" ENV=sokoban BUDGET=$(left 110) RUN_ROOT=/tmp/runs \
  bash scripts/gpu_chain.sh model.path=$SMOLLM env.params.max_moves=4 & pids+=($!)
if [ "${ENGINE:-1}" = 1 ]; then
  OUT= RUNS="erl:0" ENV=frozenlake BUDGET=$(left 70) RUN_ROOT=/tmp/runs/engine \
    bash scripts/gpu_chain.sh model.path=$SMOLLM trainer.rollout_engine=engine & pids+=($!)
fi
early() { OUT=/tmp/early/frozenlake DATA=/tmp/early/data MODEL_PATH=$SMOLLM "$@"; }
arm() {  # RL from a stage, resumed when its folder holds a run
  local b r=false; b=$(left 90)
  if [ "$b" -lt 120 ]; then echo "arm $1: $b s left, not started" >> /tmp/early/$1-erl.log; return 0; fi
  [ -f /tmp/early/frozenlake/$1-erl/config.json ] && r=true
  early bash scripts/early_erl.sh "$1" preset=gpu trainer.time_budget_s=$b trainer.progress=false \
    resume=$r >> /tmp/early/$1-erl.log 2>&1
}
(
  if [ ! -f /tmp/early/frozenlake/compare.md ]; then
    BUILD_ARGS=gen_batch_size=512 STAGE_ARGS="trainer.progress=false trainer.loggers=[console]" \
      EVAL_ARGS="eval.n=64 trainer.progress=false" early bash scripts/early_compare.sh > /tmp/early/compare.log 2>&1
  fi
  if [ "${ARMS:-1}" = 1 ]; then arm il & a=$!; arm sr & b=$!; wait $a; wait $b; fi
) & pids+=($!)

( sleep $(( LIMIT + 20 )); pkill -INT -f "erl[.]cli" ) & DOG=$!  # [.]: never matches a shell whose command line holds the pattern
for p in "${pids[@]}"; do wait "$p"; done
kill $(pgrep -P $DOG) $DOG $SMI 2>/dev/null  # the sleep too: it holds the call's output open
nvidia-smi --query-gpu=memory.used --format=csv
if [ -n "${OUT:-}" ]; then
  tar -czf "$OUT/runs.tgz" -C /tmp --exclude=checkpoints --exclude=final --exclude=tensorboard \
    --exclude='*.safetensors' --exclude='*.pt' runs early
fi
echo "call $CALL done in $((SECONDS - START)) s"
