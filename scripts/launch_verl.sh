#!/usr/bin/env bash
# Shared launcher of the verl ERL experiments (scripts/<env>_<mode>.sh call it). Like verl's
# example scripts: everything is a Hydra override on top of configs/verl/<experiment>.yaml.
#
# Environment:
#   N_NODES=1             nodes; >1 joins the Ray cluster in RAY_ADDRESS (default: auto)
#   N_GPUS_PER_NODE=8     GPUs per node (FSDP shards the actor over all of them; rollouts are data-parallel)
#   MODEL_PATH=...        a local Hugging Face folder (default ~/models/Qwen3-4B-Instruct-2507)
#   ROLLOUT=vllm          vllm | sglang | hf (HF-transformers generation, no vLLM needed)
#   PYTHON=python3        interpreter
#   DRY_RUN=1             print the command instead of running it
# Extra arguments are passed to Hydra unchanged, e.g. trainer.total_training_steps=50.
# The run starts in the repository root, so relative paths (trainer.default_local_dir, data files) are
# the repository's; Hydra itself writes nothing (configs/verl/erl_base.yaml).
#
# Several nodes, on an existing Ray cluster:
#   head:    ray start --head --port=6379 --num-gpus=8
#   others:  ray start --address=<head-ip>:6379 --num-gpus=8
#   head:    N_NODES=2 bash scripts/frozenlake_erl.sh
set -euo pipefail

EXPERIMENT=${EXPERIMENT:?set by the experiment script}
N_NODES=${N_NODES:-1}
N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-8}
MODEL_PATH=${MODEL_PATH:-$HOME/models/Qwen3-4B-Instruct-2507}
ROLLOUT=${ROLLOUT:-vllm}
PYTHON=${PYTHON:-python3}

for v in N_NODES N_GPUS_PER_NODE; do
  if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then echo "$0: $v must be a positive integer, got '${!v}'" >&2; exit 2; fi
done
case "$ROLLOUT" in vllm|sglang|hf) ;; *) echo "$0: ROLLOUT must be vllm, sglang or hf, got '$ROLLOUT'" >&2; exit 2;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
if [ "$N_NODES" -gt 1 ]; then
  export RAY_ADDRESS=${RAY_ADDRESS:-auto}   # attach to the cluster started with `ray start`
fi

CMD=("$PYTHON" -m erl.trainers.verl.main --config-name "$EXPERIMENT"
     "trainer.nnodes=$N_NODES"
     "trainer.n_gpus_per_node=$N_GPUS_PER_NODE"
     "actor_rollout_ref.model.path=$MODEL_PATH"
     "actor_rollout_ref.rollout.name=$ROLLOUT"
     "$@")

if [ "${DRY_RUN:-0}" = "1" ]; then
  [ -n "${RAY_ADDRESS:-}" ] && printf 'RAY_ADDRESS=%q ' "$RAY_ADDRESS"
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
cd "$ROOT"
exec "${CMD[@]}"
