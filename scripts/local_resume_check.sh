#!/usr/bin/env bash
# Exact-resume check of the local trainer (erl-train), the twin of verl_resume_check.sh. Run A
# trains SAVE_AT + 1 steps and checkpoints at step SAVE_AT; runs B (resumed) and C (the control)
# each start a new process in a fresh folder from A's step-SAVE_AT checkpoint and train the step
# after it. That step is compared (erl.tracking.compare_step): every sampled count and outcome
# equal and losses within 1% is "REPRODUCED"; gaps no larger than twice the resumed-vs-control
# gap are "within run-to-run noise"; anything else fails (exit 1). A new process is the point:
# whatever a process keeps besides the checkpoint (caches, compiled kernels) shows up here.
#
#   bash scripts/local_resume_check.sh                          # the CPU default, SAVE_AT=2
#   CHECK_DIR=/tmp/lrc bash scripts/local_resume_check.sh preset=gpu model.path=/models/SmolLM2
# PHASE=original | resumed | control | compare | all (default); PARALLEL=1 runs B and C side by
# side (a GPU with room for both); DRY_RUN=1 prints the three training commands.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECK_DIR=${CHECK_DIR:-outputs/local_resume_check}
PHASE=${PHASE:-all}
SAVE_AT=${SAVE_AT:-2}
STEP=$((SAVE_AT + 1))
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! [[ $SAVE_AT =~ ^[1-9][0-9]*$ ]]; then
  echo "local_resume_check.sh: SAVE_AT must be a step >= 1, got '$SAVE_AT'" >&2
  exit 2
fi

# every checkpoint kept (the last step saves too), no eval or timed checkpoint in between
common=("$@" "trainer.total_steps=$STEP" "trainer.save_every=$SAVE_AT" trainer.keep_checkpoints=0
        trainer.eval_every=0 trainer.save_every_minutes=0 trainer.progress=false "trainer.loggers=[console]")

train() {  # NAME [resume=PATH]
  local name=$1
  shift
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "$PYTHON -m erl.cli.train ${common[*]} trainer.output_dir=$CHECK_DIR/$name $*"
    return
  fi
  rm -rf "${CHECK_DIR:?}/$name"
  "$PYTHON" -m erl.cli.train "${common[@]}" "trainer.output_dir=$CHECK_DIR/$name" "$@"
}

from=resume=$CHECK_DIR/original/checkpoints/step_$SAVE_AT
[[ $PHASE == all || $PHASE == original ]] && train original
if [[ ${PARALLEL:-0} == 1 && $PHASE == all && ${DRY_RUN:-0} != 1 ]]; then
  train resumed "$from" & b=$!
  train control "$from" & c=$!
  wait $b
  wait $c
else
  [[ $PHASE == all || $PHASE == resumed ]] && train resumed "$from"
  [[ $PHASE == all || $PHASE == control ]] && train control "$from"
fi
if [[ ( $PHASE == all || $PHASE == compare ) && ${DRY_RUN:-0} != 1 ]]; then
  "$PYTHON" -m erl.tracking --check-dir "$CHECK_DIR" --step "$STEP"  # the control where it was made
fi
