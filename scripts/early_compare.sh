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
#   overrides), PYTHON. Every command's device is `auto` (the GPU when there is one).
set -euo pipefail
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
read -r -a EVAL_EXTRA <<< "${EVAL_ARGS:-}"
mkdir -p "$OUT"

if [ ! -f "$DATA/manifest.json" ]; then
  "$PYTHON" -m erl.cli.early build "env=$ENV" "${MODEL_ARGS[@]}" "out=$DATA" "${BUILD_EXTRA[@]}"
fi

stage() {  # stage NAME OUTPUT_DIR [INIT_FROM]
  if [ -f "$2/final/model.safetensors" ]; then echo "early_compare: $2/final exists, reused"; return 0; fi
  local init=()
  if [ -n "${3:-}" ]; then init=("model.init_from=$3"); fi
  "$PYTHON" -m erl.cli.early train "stage=$1" "${MODEL_ARGS[@]}" "${init[@]}" "data=$DATA" \
    "trainer.output_dir=$2" "${STAGE_EXTRA[@]}"
}
stage il "$OUT/il"
stage iwm "$OUT/iwm"
stage il "$OUT/iwm-il" "$OUT/iwm"
stage sr "$OUT/sr"

for arm in base il iwm-il sr; do
  if [ -f "$OUT/eval_$arm.json" ]; then echo "early_compare: $OUT/eval_$arm.json exists, reused"; continue; fi
  init=()
  if [ "$arm" != base ]; then init=("model.init_from=$OUT/$arm"); fi
  "$PYTHON" -m erl.cli.evaluate "env=$ENV" "${MODEL_ARGS[@]}" "${init[@]}" \
    "erl.max_new_tokens=${MAX_NEW_TOKENS:-128}" "eval.out=$OUT/eval_$arm.json" "${EVAL_EXTRA[@]}"
done

"$PYTHON" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = ["| arm | first-attempt success (greedy) | tasks | stage steps |", "|---|---|---|---|"]
for arm in ("base", "il", "iwm-il", "sr"):
    m = json.loads((out / f"eval_{arm}.json").read_text())["metrics"]
    steps = []
    for stage in {"il": ["il"], "iwm-il": ["iwm", "iwm-il"], "sr": ["sr"]}.get(arm, []):
        rows = [json.loads(x) for x in (out / stage / "metrics.jsonl").read_text().splitlines() if x.strip()]
        steps.append(f"{stage} {max((r.get('step', 0) for r in rows), default=0)}")
    lines.append(f"| {arm} | {m['eval/success']:.3f} | {int(m['eval/tasks'])} | {', '.join(steps) or '-'} |")
(out / "compare.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
