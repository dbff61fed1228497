#!/usr/bin/env bash
# IL warm start with strict action tags, then RL, on one GPU: the "[from il, action tag]" rows of
# docs/results.md (raw files in docs/gpu/il_action_tag). One command per row:
#   MODEL_PATH=/models/SmolLM2-135M-Instruct bash scripts/il_tag_rl.sh erl 0
#   MODEL_PATH=/models/SmolLM2-135M-Instruct bash scripts/il_tag_rl.sh rlvr 0
# The dataset (the solver's replies as <action>X</action> on the RL runs' 1,024 training tasks) and
# the IL stage (6 epochs) are made once and shared by every run; the RL run is preset=gpu with
# env.params.action_tag=true: only a tagged action is a move, so RL cannot drift into word salad
# whose last direction word scores (the base model writes no tags: it needs the warm start).
# ENV=sokoban for the other grid game; ENV_ARGS: env overrides for the dataset and the run alike (the
# tasks must match), e.g. ENV=sokoban ENV_ARGS="env.params.max_moves=4" (the GPU Sokoban runs' rooms);
# extra arguments go to erl-train. STAGE=il_rehearse rehearses the base model's own reflections in the
# IL mix (early.reflections=true), so that the warm start keeps ERL's reflection step (plain IL teaches
# the model to answer the reflection prompt with a bare move too). Output: $OUT/<stage>-<mode>-s<seed>.
set -euo pipefail
MODE=${1:?usage: il_tag_rl.sh erl|rlvr|no_memory|no_reflection [SEED] [erl-train overrides]}
SEED=${2:-0}
shift $(( $# >= 2 ? 2 : 1 ))
case "$MODE" in erl|rlvr|no_memory|no_reflection) ;; *) echo "$0: the mode must be erl, rlvr, no_memory or no_reflection, got '$MODE'" >&2; exit 2;; esac
if ! [[ $SEED =~ ^[0-9]+$ ]]; then echo "$0: the seed must be a non-negative integer, got '$SEED'" >&2; exit 2; fi
STAGE=${STAGE:-il}
source "$(dirname "$0")/il_tag_common.sh"
il_tag_recipe "$STAGE" || exit 2
export ENV=${ENV:-frozenlake}
export DATA=${DATA:-data/early/$ENV-tag$([ "$REFL" = true ] && echo -refl)} OUT=${OUT:-outputs/early/$ENV-tag}
read -r -a ENV_EXTRA <<< "${ENV_ARGS:-}"
export MODE MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-16} RUN_DIR=${RUN_DIR:-$OUT/$STAGE-$MODE-s$SEED}
exec bash "$(dirname "$0")/early_erl.sh" "$STAGE" preset=gpu env.params.action_tag=true "${ENV_EXTRA[@]}" "seed=$SEED" "$@"
