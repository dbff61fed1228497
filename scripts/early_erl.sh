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
#   DATA=data/early/$ENV, OUT=outputs/early/$ENV, MODE=erl, MAX_NEW_TOKENS=128 (erl.max_new_tokens in
#   every arm: an SR policy writes its reasoning before the action), BUILD_ARGS / STAGE_ARGS (extra
#   overrides for erl-early build / train, space-separated), PYTHON=python3, DRY_RUN=1 (print only).
set -euo pipefail
METHOD=${1:?usage: early_erl.sh il|iwm|sr|none [erl-train overrides]}
shift
case "$METHOD" in il|iwm|sr|none) ;; *) echo "$0: the method must be il, iwm, sr or none, got '$METHOD'" >&2; exit 2;; esac
ENV=${ENV:-frozenlake}
MODEL=${MODEL:-smollm2-135m-instruct}
DATA=${DATA:-data/early/$ENV}
OUT=${OUT:-outputs/early/$ENV}
MODE=${MODE:-erl}
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
MODEL_ARGS=("model=$MODEL")
if [ -n "${MODEL_PATH:-}" ]; then MODEL_ARGS+=("model.path=$MODEL_PATH"); fi
read -r -a BUILD_EXTRA <<< "${BUILD_ARGS:-}"
read -r -a STAGE_EXTRA <<< "${STAGE_ARGS:-}"

run() {
  if [ "${DRY_RUN:-0}" = "1" ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

stage() {  # stage NAME OUTPUT_DIR [INIT_FROM]
  if [ -f "$2/final/model.safetensors" ] && [ "${DRY_RUN:-0}" != "1" ]; then
    echo "early_erl: $2/final exists, reused"; return 0
  fi
  local init=()
  if [ -n "${3:-}" ]; then init=("model.init_from=$3"); fi
  run "$PYTHON" -m erl.cli.early train "stage=$1" "${MODEL_ARGS[@]}" "${init[@]}" "data=$DATA" \
    "trainer.output_dir=$2" "${STAGE_EXTRA[@]}"
}

WARM=()
if [ "$METHOD" != none ]; then
  if [ ! -f "$DATA/manifest.json" ] || [ "${DRY_RUN:-0}" = "1" ]; then
    run "$PYTHON" -m erl.cli.early build "env=$ENV" "${MODEL_ARGS[@]}" "out=$DATA" "${BUILD_EXTRA[@]}"
  fi
  case "$METHOD" in
    il)  stage il "$OUT/il"; WARM=("model.init_from=$OUT/il") ;;
    iwm) stage iwm "$OUT/iwm"; stage il "$OUT/iwm-il" "$OUT/iwm"; WARM=("model.init_from=$OUT/iwm-il") ;;
    sr)  stage sr "$OUT/sr"; WARM=("model.init_from=$OUT/sr") ;;
  esac
fi
run "$PYTHON" -m erl.cli.train "env=$ENV" "${MODEL_ARGS[@]}" "${WARM[@]}" "erl.mode=$MODE" \
  "erl.max_new_tokens=${MAX_NEW_TOKENS:-128}" "trainer.output_dir=$OUT/$METHOD-$MODE" "$@"
