#!/usr/bin/env bash
# Early Experience warm start, then a verl RL experiment: one command per arm on a GPU node.
#   MODEL_PATH=/models/Qwen3-4B-Instruct-2507 bash scripts/early_verl.sh il  frozenlake_erl   # IL  -> ERL
#   MODEL_PATH=/models/Qwen3-4B-Instruct-2507 bash scripts/early_verl.sh iwm frozenlake_erl   # IWM -> IL -> ERL
#   MODEL_PATH=/models/Qwen3-4B-Instruct-2507 bash scripts/early_verl.sh sr  sokoban_rlvr     # SR  -> RLVR
# 1. erl-early build (once per DATA) samples the alternatives and rationales with the base model
#    (HF generate on the first GPU), on the first N_TASKS training tasks of the experiment's env
#    (env.params=null: the class defaults, as env.params={} in configs/verl/erl_base.yaml; seed 0);
# 2. scripts/early_sft_verl.sh trains the stage(s) with verl's SFT trainer on every GPU;
# 3. scripts/<EXPERIMENT>.sh starts RL with MODEL_PATH=<the last stage's final/>.
# Extra arguments go to the RL experiment. Environment: MODEL_PATH, N_TASKS=512, DATA=data/early/<env>-verl,
#   OUT=outputs/early_verl, BUILD_ARGS, plus those of early_sft_verl.sh and launch_verl.sh; DRY_RUN=1 prints the commands.
set -euo pipefail
METHOD=${1:?usage: early_verl.sh il|iwm|sr EXPERIMENT [overrides]}
EXPERIMENT=${2:?usage: early_verl.sh il|iwm|sr EXPERIMENT [overrides]}
shift 2
case "$METHOD" in il|iwm|sr) ;; *) echo "$0: the method must be il, iwm or sr, got '$METHOD'" >&2; exit 2;; esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -f "$HERE/$EXPERIMENT.sh" ] || { echo "$0: no scripts/$EXPERIMENT.sh" >&2; exit 2; }
ENV=${EXPERIMENT%%_*}
BASE=${MODEL_PATH:?set MODEL_PATH to the base model folder}
export DATA=${DATA:-data/early/$ENV-verl}
OUT=${OUT:-outputs/early_verl}
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$(dirname "$HERE")${PYTHONPATH:+:$PYTHONPATH}"
read -r -a BUILD_EXTRA <<< "${BUILD_ARGS:-}"

run() {
  if [ "${DRY_RUN:-0}" = "1" ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [ ! -f "$DATA/manifest.json" ] || [ "${DRY_RUN:-0}" = "1" ]; then
  run "$PYTHON" -m erl.cli.early build "env=$ENV" env.params=null \
    "n_tasks=${N_TASKS:-512}" "model.path=$BASE" model.lora.enabled=false "out=$DATA" "${BUILD_EXTRA[@]}"
fi
sft() {  # sft STAGE OUT MODEL
  if [ -e "$2/final" ] && [ "${DRY_RUN:-0}" != "1" ]; then echo "early_verl: $2/final exists, reused"; return 0; fi
  run env "OUT=$2" "MODEL_PATH=$3" bash "$HERE/early_sft_verl.sh" "$1"
}
case "$METHOD" in
  il)  sft il "$OUT/$ENV-il" "$BASE"; WARM="$OUT/$ENV-il/final" ;;
  iwm) sft iwm "$OUT/$ENV-iwm" "$BASE"; sft il "$OUT/$ENV-iwm-il" "$OUT/$ENV-iwm/final"; WARM="$OUT/$ENV-iwm-il/final" ;;
  sr)  sft sr "$OUT/$ENV-sr" "$BASE"; WARM="$OUT/$ENV-sr/final" ;;
esac
run env "MODEL_PATH=$WARM" bash "$HERE/$EXPERIMENT.sh" "trainer.experiment_name=$EXPERIMENT-from-$METHOD" "$@"
