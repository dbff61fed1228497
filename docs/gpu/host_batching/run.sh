#!/usr/bin/env bash
# Thirteenth session, one device call: ERL / RLVR step time at preset=gpu for this commit and for
# the session's starting commit (d78317a, unpacked from .ovl/base.tar) in the same call, then a
# host cProfile of one ERL collect at this commit (profile) or at the base (profile_base).
# Names starting with head / base: a step measurement of that tree (STEPS steps, default 3). Needs /tmp/smollm2 (scripts/device_prepare.sh).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/host_batching}; mkdir -p "$OUT" /tmp/base
tar -xf .ovl/base.tar -C /tmp/base
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
step() {  # step NAME ROOT
  echo "== $1 ($(date +%T)): local_step.py --warmup 1 --steps ${STEPS:-3} in $2" | tee -a "$OUT/run.log"
  (cd "$2" && PYTHONPATH=$2:/tmp/ov/site timeout 240 python3 benchmarks/local_step.py --set preset=gpu \
     --set model.path=/tmp/smollm2 --warmup 1 --steps "${STEPS:-3}") > "$OUT/$1.txt" 2>&1; echo "   exit $?" | tee -a "$OUT/run.log"
}
for what in ${@:-head base profile}; do
  case $what in
    head*) step "step_$what" "$PWD" ;;
    base*) step "step_$what" /tmp/base ;;
    profile|profile_base) root=$PWD; [ "$what" = profile_base ] && root=/tmp/base
             echo "== $what ($(date +%T)) in $root" | tee -a "$OUT/run.log"
             (cd "$root" && PYTHONPATH=$root:/tmp/ov/site timeout 150 python3 benchmarks/update_batches.py \
               --set preset=gpu --set model.path=/tmp/smollm2 --profile-collect 45 --micro 1024:65536 --repeats 1) \
               > "$OUT/${what}_collect_host.txt" 2>&1; echo "   exit $?" | tee -a "$OUT/run.log" ;;
  esac
done
