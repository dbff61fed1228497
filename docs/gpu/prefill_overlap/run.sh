#!/usr/bin/env bash
# Fourteenth session, one device call: ERL / RLVR step time at preset=gpu for this commit (head*) and
# for the commit in .ovl/base.tar (base*: the session's starting commit, 196e424 in the fourteenth) in the same call,
# the engine's split of an ERL and an RLVR collect (workload_*), and torch.profiler over an ERL
# collect (profile_*). Needs /tmp/smollm2 (scripts/device_prepare.sh). STEPS: steps measured (3);
# WARMUP: steps before them (1); ENGINES: the workload's rollout policies (engine,engine); WORKLOAD_ARGS:
# more arguments for the workload parts (e.g. --profile-host).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/prefill_overlap}; mkdir -p "$OUT" /tmp/base
[ -f .ovl/base.tar ] && tar -xf .ovl/base.tar -C /tmp/base
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
run() {  # run NAME ROOT LIMIT COMMAND...
  local name=$1 root=$2 limit=$3; shift 3
  echo "== $name ($(date +%T)) in $root: $*" | tee -a "$OUT/run.log"
  (cd "$root" && PYTHONPATH=$root:/tmp/ov/site timeout "$limit" "$@") > "$OUT/$name.txt" 2>&1
  echo "   exit $?" | tee -a "$OUT/run.log"
}
for what in ${@:-head base}; do
  root=$PWD; case $what in *base*) root=/tmp/base ;; esac
  set_=(--set preset=gpu --set model.path=/tmp/smollm2)
  case $what in
    head*|base*) run "step_$what" "$root" 240 python3 benchmarks/local_step.py "${set_[@]}" --warmup "${WARMUP:-1}" --steps "${STEPS:-3}" ;;
    workload*) run "$what" "$root" 240 python3 benchmarks/rollout.py --workload erl "${set_[@]}" --engines "${ENGINES:-engine,engine}" ${WORKLOAD_ARGS:-} ;;
    rlvr*) run "$what" "$root" 200 python3 benchmarks/rollout.py --workload erl "${set_[@]}" --set erl.mode=rlvr \
             --engines engine,engine ;;
    profile*) run "$what" "$root" 200 python3 benchmarks/rollout.py --workload erl "${set_[@]}" --engines engine,engine \
                --profile-cuda collect ;;
    *) echo "run.sh: unknown part $what" >&2; exit 2 ;;
  esac
done
