# Sourced by the per-session device scripts (docs/gpu/*/run.sh) from the repository root, with OUT
# set. Makes $OUT and defines: gpu, the local trainer's GPU preset on the converted model;
# run NAME LIMIT COMMAND..., the command with the overlay on PYTHONPATH, its output into
# $OUT/NAME.txt, a line before and after it in $OUT/run.log, its exit status returned; gpu_tests;
# collect, local_step and in_base (below).
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# scripts/device_prepare.sh turns the tokenizer's threads off (for verl's Ray workers); a user's
# erl-train leaves them on, and an ERL collect encodes ~1,000 new prompts (its reflections and
# second attempts) in batches across them: on one thread that was 0.32 s of an ERL collect
# against 0.05 s of RLVR's (docs/gpu/host_split/call2)
export TOKENIZERS_PARALLELISM=true
gpu=(--set preset=gpu --set model.path=/tmp/smollm2)
run() {
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T)): $*" | tee -a "$OUT/run.log"
  PYTHONPATH=$PWD:/tmp/ov/site timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?; echo "   exit $rc" | tee -a "$OUT/run.log"; return $rc
}
# the GPU tests of the rollout engine and its CUDA graphs, into $OUT/gpu_tests.txt
gpu_tests() {
  run gpu_tests 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_rollout_engine.py tests/test_rollout_graphs.py tests/test_rollout_flex.py tests/test_rollout_fused.py tests/test_rollout_regions.py
}
# collect NAME ARGS...: benchmarks/rollout.py's ERL workload at the GPU preset (ARGS: --engines, --timeline ...),
# into $OUT/NAME.txt
collect() { run "$1" 200 python3 benchmarks/rollout.py --workload erl "${gpu[@]}" "${@:2}"; }
# local_step NAME [ARGS...]: benchmarks/local_step.py at the GPU preset, ERL and RLVR steps alternating
# (WARMUP, STEPS), into $OUT/NAME.txt
local_step() {
  run "$1" 300 python3 benchmarks/local_step.py "${gpu[@]}" --warmup "${WARMUP:-2}" --steps "${STEPS:-3}" "${@:2}"
}
# in_base TAR COMMAND...: COMMAND inside an earlier commit's tree, carried as TAR (a git archive) and unpacked
# into /tmp/<TAR's name>
in_base() {
  local dir; dir=/tmp/$(basename "$1" .tar)
  mkdir -p "$dir" && tar -xf "$1" -C "$dir" 2>/dev/null
  (cd "$dir" && "${@:2}")
}
