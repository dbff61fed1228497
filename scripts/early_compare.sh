#!/usr/bin/env bash
# Early Experience arms side by side, before any RL: the dataset built once, then IL, IWM -> IL and
# SR trained on the same expert budget (the same expert states), and the greedy first-attempt
# success of each (and of the base model) measured by erl-eval on the RL runs' held-out tasks.
#   ENV=frozenlake MODEL_PATH=/tmp/smollm2 bash scripts/early_compare.sh
#   ENV=sokoban BUILD_ARGS="gen_batch_size=512" STAGE_ARGS="trainer.micro_batch_size=16" bash scripts/early_compare.sh
# Writes $OUT/eval_<arm>.json and $OUT/compare.md (arm | success | steps of its stage). Stages and
# data that exist are reused (scripts/early_erl.sh reads the same folders: RL from a stage next).
# Environment: ENV, MODEL, MODEL_PATH, DATA, OUT, MAX_NEW_TOKENS (erl.max_new_tokens of every eval:
#   an SR policy reasons before its action), BUILD_ARGS / STAGE_ARGS / EVAL_ARGS (space-separated
#   overrides), PYTHON, DRY_RUN=1 (scripts/early_common.sh), ARM_LIST (the arms to train and
#   evaluate, default "base il iwm-il sr": calls with one arm each run side by side once the
#   dataset is built). Every command's device is `auto`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/early_common.sh"
read -r -a EVAL_EXTRA <<< "${EVAL_ARGS:-}"

ARM_LIST=${ARM_LIST:-base il iwm-il sr}
for arm in $ARM_LIST; do
  case "$arm" in base|il|iwm-il|sr) ;;
    *) echo "early_compare.sh: unknown arm '$arm' in ARM_LIST (base, il, iwm-il, sr)" >&2; exit 2 ;;
  esac
done
has() { [[ " $ARM_LIST " == *" $1 "* ]]; }

build_data
has il && stage il "$OUT/il"
has iwm-il && stage iwm "$OUT/iwm" && stage il "$OUT/iwm-il" "$OUT/iwm"
has sr && stage sr "$OUT/sr"

for arm in $ARM_LIST; do
  if [ -f "$OUT/eval_$arm.json" ]; then echo "early_compare: $OUT/eval_$arm.json exists, reused"; continue; fi
  init=()
  if [ "$arm" != base ]; then init=("model.init_from=$OUT/$arm"); fi
  run "$PYTHON" -m erl.cli.evaluate "env=$ENV" "${MODEL_ARGS[@]}" "${init[@]}" \
    "erl.max_new_tokens=${MAX_NEW_TOKENS:-128}" "eval.out=$OUT/eval_$arm.json" "${EVAL_EXTRA[@]}"
done

run "$PYTHON" -m erl.early.report "$OUT"   # the table, also in $OUT/compare.md
