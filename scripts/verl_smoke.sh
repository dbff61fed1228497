#!/usr/bin/env bash
# A few steps of any verl experiment at a small model's scale (the settings of the H100 runs in
# README "Results": 4 tasks a step, n=2 per attempt, 4 turns, short turns, lr 2e-5, 1 GPU, HF rollout).
#   MODEL_PATH=/models/SmolLM2-135M-Instruct bash scripts/verl_smoke.sh sokoban_erl 5 [overrides]
# Output: outputs/verl_smoke/<experiment>/ (metrics.jsonl, curves.png, config.yaml).
set -euo pipefail
EXPERIMENT=${1:?usage: verl_smoke.sh EXPERIMENT [STEPS] [overrides]}
STEPS=${2:-5}
shift $(( $# >= 2 ? 2 : 1 ))
export EXPERIMENT N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-1} ROLLOUT=${ROLLOUT:-hf}
OUT_DIR=${OUT_DIR:-outputs/verl_smoke/$EXPERIMENT}
exec bash "$(dirname "$0")/launch_verl.sh" \
  data.train_batch_size=4 erl.n_attempt=2 erl.max_new_tokens=32 erl.max_reflection_tokens=96 erl.max_turns=4 \
  erl_trainer.eval_tasks=16 actor_rollout_ref.actor.optim.lr=2e-5 actor_rollout_ref.actor.ppo_mini_batch_size=4 \
  erl.reflection_require_tag=false "trainer.total_training_steps=$STEPS" "trainer.test_freq=$STEPS" \
  trainer.save_freq=-1 "trainer.logger=[console]" "trainer.default_local_dir=$OUT_DIR" trainer.resume_mode=disable "$@"
