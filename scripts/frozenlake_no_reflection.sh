#!/usr/bin/env bash
# verl ERL experiment frozenlake_no_reflection (configs/verl/frozenlake_no_reflection.yaml). One node x 8 GPUs:
#   MODEL_PATH=/models/Qwen3-4B-Instruct-2507 bash scripts/frozenlake_no_reflection.sh
# Other sizes / backends / settings (see scripts/launch_verl.sh):
#   N_GPUS_PER_NODE=2 ROLLOUT=hf bash scripts/frozenlake_no_reflection.sh trainer.total_training_steps=20
#   N_NODES=2 bash scripts/frozenlake_no_reflection.sh          # on a Ray cluster started with `ray start`
EXPERIMENT=frozenlake_no_reflection exec bash "$(dirname "$0")/launch_verl.sh" "$@"
