#!/usr/bin/env bash
# Early Experience warm start, then RL, on the local trainer: one command per arm.
#   bash scripts/early_erl.sh il      # IL -> ERL
#   bash scripts/early_erl.sh iwm     # IWM -> IL -> ERL
#   bash scripts/early_erl.sh sr      # SR -> ERL
#   bash scripts/early_erl.sh none    # ERL from the base model (the same settings, no warm start)
#   MODE=rlvr bash scripts/early_erl.sh sr trainer.total_steps=50 trainer.device=cuda   # SR -> RLVR
# Extra arguments go to erl-train. The dataset is built once per DATA and every stage once per
# output folder (a finished one is reused), so the arms share them.
# Environment: ENV=frozenlake, MODEL=smollm2-135m-instruct (configs/local/model), MODEL_PATH (model.path),
#   DATA=data/early/$ENV, OUT=outputs/early/$ENV, RUN_DIR=$OUT/<method>-$MODE (the RL run), MODE=erl, MAX_NEW_TOKENS=128 (erl.max_new_tokens in
#   every arm: an SR policy writes its reasoning before the action), BUILD_ARGS / STAGE_ARGS (extra
#   overrides for erl-early build / train, space-separated), PYTHON=python3, DRY_RUN=1 (print only).
set -euo pipefail
METHOD=${1:?usage: early_erl.sh il|il_rehearse|iwm|sr|none [erl-train overrides]}
shift
case "$METHOD" in il|il_rehearse|iwm|sr|none) ;; *) echo "$0: the method must be il, il_rehearse, iwm, sr or none, got '$METHOD'" >&2; exit 2;; esac
MODE=${MODE:-erl}
source "$(dirname "${BASH_SOURCE[0]}")/early_common.sh"

WARM=()
if [ "$METHOD" != none ]; then
  build_data
  case "$METHOD" in
    il)  stage il "$OUT/il"; WARM=("model.init_from=$OUT/il") ;;
    il_rehearse) stage il_rehearse "$OUT/il_rehearse"; WARM=("model.init_from=$OUT/il_rehearse") ;;  # data: early.reflections=true
    iwm) stage iwm "$OUT/iwm"; stage il "$OUT/iwm-il" "$OUT/iwm"; WARM=("model.init_from=$OUT/iwm-il") ;;
    sr)  stage sr "$OUT/sr"; WARM=("model.init_from=$OUT/sr") ;;
  esac
fi
run "$PYTHON" -m erl.cli.train "env=$ENV" "${MODEL_ARGS[@]}" "${WARM[@]}" "erl.mode=$MODE" \
  "erl.max_new_tokens=${MAX_NEW_TOKENS:-128}" "trainer.output_dir=${RUN_DIR:-$OUT/$METHOD-$MODE}" "$@"
