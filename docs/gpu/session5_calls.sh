#!/usr/bin/env bash
# The device calls of the fifth session (one H200), each <= 10 minutes, resuming from what the call
# before left on the machine's /tmp (docs/gpu/README.md):
#   bash docs/gpu/session5_calls.sh N        # N = 1, 2, 3; SMOLLM: the converted model folder
# What runs side by side (WARM=0 / VERL=0 / BENCH=1 switch the parts off / on):
# - WARM: $WARM_ENV (frozenlake) with env.params.action_tag=true (only <action>X</action> is a move).
#   An IL warm start (erl-early build + train stage=il on the RL runs' 1,024 training tasks, expert
#   replies only), then the $WARM_RUNS (erl:0 rlvr:0) from it, preset=gpu (scripts/gpu_chain.sh);
#   WARM_ARGS: more env overrides for all three (e.g. "env.params.max_moves=4" for Sokoban);
#   IL_STAGE=il_rehearse adds the policy's own reflections to the IL mix (early.reflections=true).
# - VERL: FrozenLake ERL and RLVR through the verl trainer (scripts/launch_verl.sh, FSDP + the hf
#   rollout on the engine), at the local preset's scale: 64 tasks a step, n=8, 4 turns, grids 2-3,
#   full fine-tuning at lr 2e-5 (verl's LoRA path is not wired to the hf rollout's weight sync).
#   Each resumes from its last checkpoint (save_freq=2) when called again. VERL_EXPS picks the
#   experiments (default "frozenlake_erl frozenlake_rlvr"), VERL_EXTRA adds overrides.
# - BENCH: benchmarks/local_step.py at preset=gpu (ERL vs RLVR step time, side by side).
# Everything but checkpoints and weights is packed into $OUT/runs.tgz at the end.
set -uo pipefail
CALL=${1:?usage: session5_calls.sh N}
LIMIT=${LIMIT:-540}  # s from this script's start by which every run has stopped (a first call: ~470)
source "$(dirname "${BASH_SOURCE[0]}")/call_common.sh"
call_begin early5 verl
IL_EPOCHS=${IL_EPOCHS:-6}
IL_STAGE=${IL_STAGE:-il}
REFL=$([ "$IL_STAGE" = il_rehearse ] && echo true || echo false)
WARM_ENV=${WARM_ENV:-frozenlake}
read -r -a WARM_EXTRA <<< "${WARM_ARGS:-}"
read -r -a VERL_MORE <<< "${VERL_EXTRA:-}"

if [ "${WARM:-1}" = 1 ]; then
  (
    # the fifth session's FrozenLake run used /tmp/early5/data and /tmp/early5/{build,il,eval_il}.log
    E=/tmp/early5/$WARM_ENV$([ "$REFL" = true ] && echo -refl)
    mkdir -p $E
    if [ ! -f $E/$IL_STAGE/final/model.safetensors ]; then
      python3 -m erl.cli.early build env=$WARM_ENV model.path=$SMOLLM out=$E/data n_tasks=1024 \
        env.params.action_tag=true early.k=1 early.rationales=false early.reflections=$REFL gen_batch_size=512 "${WARM_EXTRA[@]}" > $E/build.log 2>&1
      python3 -m erl.cli.early train stage=$IL_STAGE model.path=$SMOLLM data=$E/data trainer.output_dir=$E/$IL_STAGE \
        trainer.epochs=$IL_EPOCHS trainer.batch_size=32 trainer.micro_batch_size=32 trainer.progress=false \
        'trainer.loggers=[console]' > $E/il.log 2>&1
      python3 -m erl.cli.evaluate env=$WARM_ENV model.path=$SMOLLM model.init_from=$E/$IL_STAGE eval.n=64 \
        env.params.action_tag=true trainer.progress=false eval.out=$E/eval_il.json "${WARM_EXTRA[@]}" > $E/eval_il.log 2>&1
    fi
    OUT= RUNS=${WARM_RUNS:-"erl:0 rlvr:0"} ENV=$WARM_ENV BUDGET=$(left 80) RUN_ROOT=/tmp/runs/${IL_STAGE}_tag \
      bash scripts/gpu_chain.sh model.path=$SMOLLM model.init_from=$E/$IL_STAGE env.params.action_tag=true "${WARM_EXTRA[@]}"
  ) & pids+=($!)
fi

VERL_ARGS=(data.train_batch_size=64 erl.n_attempt=8 erl.max_new_tokens=16 erl.max_reflection_tokens=48 erl.max_turns=4
  erl.reflection_require_tag=false +env.params.size_max=3 +env.params.max_turns=4 env.n_train=1024 env.n_val=64
  erl_trainer.eval_tasks=64 erl_trainer.progress=false actor_rollout_ref.actor.optim.lr=2e-5
  actor_rollout_ref.actor.ppo_mini_batch_size=64 trainer.total_training_steps=200 trainer.test_freq=4
  trainer.save_freq=2 trainer.max_actor_ckpt_to_keep=1 "trainer.logger=[console]" trainer.resume_mode=auto
  +actor_rollout_ref.model.override_config.attn_implementation=sdpa actor_rollout_ref.model.use_remove_padding=false
  actor_rollout_ref.actor.use_torch_compile=false actor_rollout_ref.ref.fsdp_config.param_offload=false)
verl_run() {  # verl_run EXPERIMENT: interrupted (SIGINT) when the call's time is up; resumes next call
  MODEL_PATH=$SMOLLM ROLLOUT=hf N_GPUS_PER_NODE=1 EXPERIMENT=$1 timeout --signal=INT --kill-after=30 "$(left 40)" \
    bash scripts/launch_verl.sh "${VERL_ARGS[@]}" "${VERL_MORE[@]}" trainer.default_local_dir=/tmp/verl/$1 >> /tmp/verl/$1.log 2>&1
}
if [ "${VERL:-1}" = 1 ]; then
  for exp in ${VERL_EXPS:-frozenlake_erl frozenlake_rlvr}; do verl_run "$exp" & pids+=($!); done
fi
if [ "${BENCH:-0}" = 1 ]; then
  timeout "$(left 20)" python3 benchmarks/local_step.py --set preset=gpu --set model.path=$SMOLLM --steps 3 \
    --out /tmp/runs/local_step_gpu.json > /tmp/runs/local_step_gpu.txt 2>&1 & pids+=($!)
fi

call_end early5 verl
[ -n "${OUT:-}" ] && { (cd /tmp && tar -czf "$OUT/early5_data.tgz" early5/*/data 2>/dev/null) || true; }
