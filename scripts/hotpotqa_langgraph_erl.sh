#!/usr/bin/env bash
# verl ERL experiment hotpotqa_langgraph_erl (configs/verl/hotpotqa_langgraph_erl.yaml). One node x 8 GPUs:
#   MODEL_PATH=/models/Qwen3-4B-Instruct-2507 bash scripts/hotpotqa_langgraph_erl.sh
# Other sizes / backends / settings (see scripts/launch_verl.sh):
#   N_GPUS_PER_NODE=2 ROLLOUT=hf bash scripts/hotpotqa_langgraph_erl.sh trainer.total_training_steps=20
#   N_NODES=2 bash scripts/hotpotqa_langgraph_erl.sh          # on a Ray cluster started with `ray start`
EXPERIMENT=hotpotqa_langgraph_erl exec bash "$(dirname "$0")/launch_verl.sh" "$@"
