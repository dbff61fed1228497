#!/usr/bin/env bash
# The device calls of the sixth to ninth sessions (one H200), each <= 10 minutes, resuming from what the call
# before left on the machine's /tmp (docs/gpu/README.md):
#   bash docs/gpu/session6_calls.sh N        # N = 1, 2, ...; SMOLLM: the converted model folder
# What runs side by side (each part switched by its variable, 1 = on):
# - SOKO=1: Sokoban IL warm start with strict <action>X</action> moves (the solver's replies on the
#   RL runs' 1,024 training rooms, 6 epochs; scripts/early_common.sh), its greedy eval, then IL -> ERL
#   and IL -> RLVR chains at preset=gpu (scripts/gpu_chain.sh) in /tmp/runs/sokoban_il.
# - REHEARSE=1: the same on FrozenLake with stage il_rehearse (the base model's own reflections in
#   the IL mix, early.reflections=true), in /tmp/runs/frozenlake_il_rehearse.
# - IL_FL=0: the same with plain IL on FrozenLake (../il_action_tag's recipe), in /tmp/runs/frozenlake_il.
#   WARM_RUNS (default "erl:0 rlvr:0") picks the chains after every warm start, SOKO_RUNS / REHEARSE_RUNS /
#   IL_FL_RUNS those of one; empty: the stage only.
# - VERL="name:experiment ...": verl runs at +scale=small_gpu (configs/verl/scale/small_gpu.yaml) on
#   one GPU with the hf rollout, interrupted (SIGINT) when the call's time is up and resumed from
#   their last checkpoint next call. fl_* get FrozenLake's grids of side 2-3, flil_* the same from
#   the IL_FL stage's final/ folder with action tags (started once it exists); hotpotqa gets the
#   LangGraph agent's turn lengths and 16 questions a step (the 24 training questions of the mini
#   fixture). VERL_EXTRA adds overrides to all of them.
# - ARMS="ENV ...": scripts/early_compare.sh with tags on each ENV (k=3 alternatives with rationales per
#   expert state of the 1,024 training tasks; IL at 6 epochs, IWM and SR at ARM_EPOCHS=2 (k=3: as many
#   rows as IL's 6 epochs), and their greedy evals), in /tmp/early6/arms_ENV; stages resume when
#   called again. Once the dataset is built the arms of ARM_SET (default "base il iwm-il sr") run
#   side by side, one process each (compare_ARM.log). ARM_RUNS="ENV:ARM:mode:seed ...": chains from an arm's stage once it exists
#   (scripts/gpu_chain.sh, action tags; sr with erl.max_new_tokens=128: its policy reasons before
#   its move), in /tmp/runs/arms_ENV_ARM.
# - BASE="ENV:mode:seed ...": local chains from the base model at preset=gpu (scripts/gpu_chain.sh) in
#   /tmp/runs/base, with the settings of the earlier base-model rows (Sokoban: env.params.max_moves=4,
#   ../sokoban_seeds); e.g. BASE="sokoban:no_memory:0 sokoban:no_reflection:0", the Sokoban ablations.
# - BENCH=1: benchmarks/verl_logprobs.py on the GPU (verl's per-token fallback vs chunked log-probs).
# Everything but checkpoints and weights is packed into $OUT/runs.tgz at the end.
set -uo pipefail
CALL=${1:?usage: session6_calls.sh N}
source "$(dirname "${BASH_SOURCE[0]}")/call_common.sh"
call_begin early6 verl

warm() {  # warm NAME ENV STAGE RUNS: IL warm start once (dataset, stage, eval), then the RUNS chains
  (
    export ENV=$2 DATA=/tmp/early6/$1/data OUT=/tmp/early6/$1 MODEL_PATH=$SMOLLM
    unset BUILD_ARGS STAGE_ARGS ENV_ARGS
    source scripts/il_tag_common.sh && il_tag_recipe "$3" || exit 1
    STAGE_ARGS="$STAGE_ARGS trainer.progress=false trainer.loggers=[console]"
    mkdir -p "$OUT"
    source scripts/early_common.sh
    if [ ! -f "$OUT/$3/final/model.safetensors" ]; then
      build_data > "$OUT/build.log" 2>&1 && stage "$3" "$OUT/$3" > "$OUT/stage.log" 2>&1 || exit 1
      python3 -m erl.cli.evaluate env="$2" model.path="$SMOLLM" model.init_from="$OUT/$3" eval.n=64 \
        env.params.action_tag=true trainer.progress=false eval.out="$OUT/eval_$3.json" > "$OUT/eval.log" 2>&1
    fi
    [ -z "$4" ] && exit 0
    OUT= RUNS="$4" BUDGET=$(left 80) RUN_ROOT=/tmp/runs/$1 \
      bash scripts/gpu_chain.sh model.path="$SMOLLM" model.init_from="$OUT/$3" env.params.action_tag=true
  ) & pids+=($!)
}
RUNS_DEFAULT=${WARM_RUNS-erl:0 rlvr:0}
[ "${SOKO:-1}" = 1 ] && warm sokoban_il sokoban il "${SOKO_RUNS-$RUNS_DEFAULT}"
[ "${REHEARSE:-1}" = 1 ] && warm frozenlake_il_rehearse frozenlake il_rehearse "${REHEARSE_RUNS-$RUNS_DEFAULT}"
[ "${IL_FL:-0}" = 1 ] && warm frozenlake_il frozenlake il "${IL_FL_RUNS-$RUNS_DEFAULT}"

for arms in ${ARMS:-}; do  # the Early Experience arms (IL, IWM -> IL, SR) with tags on env $arms
  ( export ENV=$arms DATA=/tmp/early6/arms_$arms/data OUT=/tmp/early6/arms_$arms MODEL_PATH=$SMOLLM MAX_NEW_TOKENS=128
    export BUILD_ARGS="n_tasks=1024 env.params.action_tag=true gen_batch_size=512"
    export STAGE_ARGS="trainer.epochs=6 trainer.batch_size=32 trainer.micro_batch_size=32 trainer.save_every=100 trainer.progress=false trainer.loggers=[console]"
    export IWM_ARGS="trainer.epochs=${ARM_EPOCHS:-2}" SR_ARGS="trainer.epochs=${ARM_EPOCHS:-2}"
    export EVAL_ARGS="env.params.action_tag=true eval.n=64 trainer.progress=false"
    mkdir -p "$OUT" && timeout "$(left 20)" bash -c 'source scripts/early_common.sh && build_data' >> "$OUT/compare.log" 2>&1 || exit 1
    for arm in ${ARM_SET:-base il iwm-il sr}; do  # the arms side by side, each with its own log
      ARM_LIST=$arm timeout "$(left 20)" bash scripts/early_compare.sh >> "$OUT/compare_$arm.log" 2>&1 &
    done
    wait ) & pids+=($!)
done
for job in ${ARM_RUNS:-}; do  # ENV:ARM:mode:seed: RL from an arm's stage, once the stage has its final/
  IFS=: read -r env arm mode seed <<< "$job"
  stage=/tmp/early6/arms_$env/$arm; extra=(); [ "$arm" = sr ] && extra=(erl.max_new_tokens=128)
  ( while [ ! -f "$stage/final/model.safetensors" ] && [ "$(left 150)" -gt 0 ]; do sleep 10; done
    [ -f "$stage/final/model.safetensors" ] || { echo "no $stage/final: $job not started"; exit 0; }
    OUT= RUNS="$mode:$seed" ENV=$env BUDGET=$(left 80) RUN_ROOT=/tmp/runs/arms_${env}_$arm \
      bash scripts/gpu_chain.sh model.path="$SMOLLM" model.init_from="$stage" env.params.action_tag=true "${extra[@]}"
  ) & pids+=($!)
done

for env in $(for job in ${BASE:-}; do echo "${job%%:*}"; done | sort -u); do
  runs=$(for job in $BASE; do [ "${job%%:*}" = "$env" ] && echo -n "${job#*:} "; done)
  extra=(); [ "$env" = sokoban ] && extra=(env.params.max_moves=4)
  ( OUT= RUNS="$runs" ENV=$env BUDGET=$(left 80) RUN_ROOT=/tmp/runs/base \
      bash scripts/gpu_chain.sh model.path="$SMOLLM" "${extra[@]}" ) & pids+=($!)
done

read -r -a VERL_MORE <<< "${VERL_EXTRA:-}"
for job in ${VERL:-}; do
  name=${job%%:*}; exp=${job#*:}; model=$SMOLLM
  case "$name" in
    fl_*) args=(+env.params.size_max=3 +env.params.max_turns=4) ;;
    flil_*) model=/tmp/early6/frozenlake_il/il/final  # IL_FL=1 makes it (in the same call: waited for)
            args=(+env.params.size_max=3 +env.params.max_turns=4 +env.params.action_tag=true) ;;
    hotpotqa*) args=(data.train_batch_size=16 actor_rollout_ref.actor.ppo_mini_batch_size=16 erl.max_new_tokens=128
                     erl.max_reflection_tokens=128) ;;
    *) args=() ;;
  esac
  (
    while [ ! -f "$model/config.json" ] && [ "$(left 120)" -gt 0 ]; do sleep 10; done
    [ -f "$model/config.json" ] || { echo "no model in $model: $name not started" >> /tmp/verl/$name.log; exit 0; }
    MODEL_PATH=$model ROLLOUT=hf N_GPUS_PER_NODE=1 EXPERIMENT=$exp timeout --signal=INT --kill-after=30 "$(left 40)" \
      bash scripts/launch_verl.sh +scale=small_gpu "${args[@]}" trainer.total_training_steps=200 trainer.resume_mode=auto \
      "${VERL_MORE[@]}" trainer.default_local_dir=/tmp/verl/$name >> /tmp/verl/$name.log 2>&1
  ) & pids+=($!)
done
if [ "${BENCH:-0}" = 1 ]; then
  for n in 4096 16384; do python3 benchmarks/verl_logprobs.py --tokens $n --device cuda; done > /tmp/runs/verl_logprobs_gpu.txt 2>&1
fi

call_end early6 verl
