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
#   overrides), PYTHON, DRY_RUN=1 (scripts/early_common.sh). Every command's device is `auto`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/early_common.sh"
read -r -a EVAL_EXTRA <<< "${EVAL_ARGS:-}"

build_data
stage il "$OUT/il"
stage iwm "$OUT/iwm"
stage il "$OUT/iwm-il" "$OUT/iwm"
stage sr "$OUT/sr"

for arm in base il iwm-il sr; do
  if [ -f "$OUT/eval_$arm.json" ]; then echo "early_compare: $OUT/eval_$arm.json exists, reused"; continue; fi
  init=()
  if [ "$arm" != base ]; then init=("model.init_from=$OUT/$arm"); fi
  run "$PYTHON" -m erl.cli.evaluate "env=$ENV" "${MODEL_ARGS[@]}" "${init[@]}" \
    "erl.max_new_tokens=${MAX_NEW_TOKENS:-128}" "eval.out=$OUT/eval_$arm.json" "${EVAL_EXTRA[@]}"
done

[ "${DRY_RUN:-0}" = "1" ] && exit 0
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
