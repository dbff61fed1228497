# Shared by scripts/early_erl.sh and scripts/early_compare.sh (sourced, not run): the settings
# from the environment, and the dataset and stage steps, each done once per folder.
# Environment: ENV=frozenlake, MODEL=smollm2-135m-instruct (configs/local/model), MODEL_PATH (model.path),
#   DATA=data/early/$ENV, OUT=outputs/early/$ENV, BUILD_ARGS / STAGE_ARGS (extra overrides for
#   erl-early build / train, space-separated), IL_ARGS / IWM_ARGS / SR_ARGS (after STAGE_ARGS, for
#   that stage only: e.g. IWM_ARGS=trainer.epochs=2, as many rows as IL's 6 epochs when k=3),
#   PYTHON=python3, DRY_RUN=1 (print the commands only).
ENV=${ENV:-frozenlake}
MODEL=${MODEL:-smollm2-135m-instruct}
DATA=${DATA:-data/early/$ENV}
OUT=${OUT:-outputs/early/$ENV}
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

build_data() {  # the dataset in $DATA, unless it is there
  if [ ! -f "$DATA/manifest.json" ] || [ "${DRY_RUN:-0}" = "1" ]; then
    run "$PYTHON" -m erl.cli.early build "env=$ENV" "${MODEL_ARGS[@]}" "out=$DATA" "${BUILD_EXTRA[@]}"
  fi
}

stage() {  # stage NAME OUTPUT_DIR [INIT_FROM]: one stage, unless its result is there
  if [ -f "$2/final/model.safetensors" ] && [ "${DRY_RUN:-0}" != "1" ]; then
    echo "$(basename "$0"): $2/final exists, reused"; return 0
  fi
  local init=() own=() var
  if [ -n "${3:-}" ]; then init=("model.init_from=$3"); fi
  var=${1^^}_ARGS  # IL_ARGS for stage il
  read -r -a own <<< "${!var:-}"
  # resume=true: a stage cut off before its final/ (a device call's time limit) continues from its
  # last checkpoint, or restarts from step 0 without one, instead of refusing the folder it left
  run "$PYTHON" -m erl.cli.early train "stage=$1" resume=true "${MODEL_ARGS[@]}" "${init[@]}" "data=$DATA" \
    "trainer.output_dir=$2" "${STAGE_EXTRA[@]}" "${own[@]}"
}
