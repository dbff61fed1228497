# Sourced by the per-session device scripts (docs/gpu/*/run.sh): run NAME LIMIT COMMAND... runs the
# command from the repository root with the overlay on PYTHONPATH, its output into $OUT/NAME.txt,
# a line each before and after it in $OUT/run.log; returns the command's exit status.
run() {
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T)): $*" | tee -a "$OUT/run.log"
  PYTHONPATH=$PWD:/tmp/ov/site timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?; echo "   exit $rc" | tee -a "$OUT/run.log"; return $rc
}
