#!/usr/bin/env bash
# verl ERL experiment sokoban_erl (configs/verl/sokoban_erl.yaml). One node x 8 GPUs:
#   MODEL_PATH=/models/Qwen3-4B-Instruct-2507 bash scripts/sokoban_erl.sh
# Other sizes / backends / settings (see scripts/launch_verl.sh):
#   N_GPUS_PER_NODE=2 ROLLOUT=hf bash scripts/sokoban_erl.sh trainer.total_training_steps=20
#   N_NODES=2 bash scripts/sokoban_erl.sh          # on a Ray cluster started with `ray start`
EXPERIMENT=sokoban_erl exec bash "$(dirname "$0")/launch_verl.sh" "$@"
