#!/usr/bin/env bash
# The verl trainer's hf rollout (the engine inside verl's worker) at the local preset's batch: FrozenLake
# ERL, 64 tasks x n=8, one GPU (configs/verl/scale/small_gpu.yaml), for its generated tokens/s beside
# the local trainer's on the same machine (issue 11). Needs the converted model (SMOLLM) and the verl
# overlay (.ovl/overlay.tar.xz, carried); writes the log and metrics.jsonl into $OUT:
#   STEPS=2 LIMIT=480 bash docs/gpu/verl_rollout.sh [extra overrides]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/device_prepare.sh > /dev/null
OUT=${OUT:-outputs/verl_rollout}; mkdir -p "$OUT"
RUN=/tmp/verl/rollout_erl; rm -rf "$RUN"
EXPERIMENT=frozenlake_erl MODEL_PATH=${SMOLLM:-/tmp/smollm2} N_GPUS_PER_NODE=1 ROLLOUT=hf \
  timeout -s INT "${LIMIT:-480}" bash scripts/launch_verl.sh +scale=small_gpu trainer.total_training_steps="${STEPS:-2}" \
  trainer.test_freq=0 trainer.save_freq=0 trainer.val_before_train=false trainer.default_local_dir="$RUN" "$@" \
  > "$OUT/verl_erl.log" 2>&1
echo "exit $?" >> "$OUT/verl_erl.log"
cp "$RUN/metrics.jsonl" "$OUT/" 2>/dev/null
python3 - "$OUT/metrics.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    keys = ("time/step", "time/rollout", "time/reflection", "time/update", "tokens/generated", "rollout/sequences",
            "throughput/gen_tokens_per_s")
    print({"step": m.get("step"), **{k: round(m[k], 2) for k in keys if k in m}})
PY
pkill -9 -f "[r]aylet"; pkill -9 -f "[g]cs_server"; pkill -9 -f "ray[:][:]"
exit 0
