#!/usr/bin/env bash
# Exact-resume check of the verl ERL trainer (issue: "a resume from the step-10 checkpoint
# reproduces step 11"). Run A trains 11 steps and checkpoints at step 10; run B starts in a
# fresh folder from A's step-10 checkpoint (actor, optimizer, cursor, reflection memory) and
# trains step 11; run C does the same again (the control: what the machine alone varies from
# identical state). Step 11 is compared (erl.tracking.compare_step): sampled token counts and
# outcomes equal and losses within 1% is "REPRODUCED"; gaps no larger than twice the
# resumed-vs-control gap are "within run-to-run noise"; anything else fails.
#
#   MODEL_PATH=/models/SmolLM2 N_GPUS_PER_NODE=1 ROLLOUT=hf CHECK_DIR=/tmp/rc \
#       bash scripts/verl_resume_check.sh [extra Hydra overrides for both runs]
# PHASE=original | resumed | control | compare | all (default): run one part at a time when one
# command may not take long enough for all of it (the device tool: 10 minutes a call); compare
# uses the control run only where one exists.
# DRY_RUN=1 prints the two training commands.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECK_DIR=${CHECK_DIR:-outputs/verl_resume_check}
EXPERIMENT=${EXPERIMENT:-frozenlake_erl}
PHASE=${PHASE:-all}
SAVE_AT=${SAVE_AT:-10}
STEP=$((SAVE_AT + 1))
PYTHON=${PYTHON:-python3}
export EXPERIMENT N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-1} ROLLOUT=${ROLLOUT:-hf}

common=("trainer.total_training_steps=$STEP" "trainer.save_freq=$SAVE_AT" trainer.test_freq=-1
        trainer.val_before_train=false "trainer.logger=[console]" "$@")

if [[ $PHASE == all || $PHASE == original ]]; then
  [ "${DRY_RUN:-0}" = 1 ] || rm -rf "$CHECK_DIR/original"
  # every checkpoint kept: the run's last step saves too, and a config that keeps one (scale/small_gpu)
  # would remove step SAVE_AT's actor files before the resumed run reads them
  bash "$ROOT/scripts/launch_verl.sh" "${common[@]}" "trainer.default_local_dir=$CHECK_DIR/original" \
    trainer.resume_mode=disable trainer.max_actor_ckpt_to_keep=null
fi
if [[ $PHASE == all || $PHASE == resumed ]]; then
  [ "${DRY_RUN:-0}" = 1 ] || rm -rf "$CHECK_DIR/resumed"
  bash "$ROOT/scripts/launch_verl.sh" "${common[@]}" "trainer.default_local_dir=$CHECK_DIR/resumed" \
    trainer.resume_mode=resume_path "trainer.resume_from_path=$CHECK_DIR/original/global_step_$SAVE_AT"
fi
if [[ $PHASE == all || $PHASE == control ]]; then
  [ "${DRY_RUN:-0}" = 1 ] || rm -rf "$CHECK_DIR/control"
  bash "$ROOT/scripts/launch_verl.sh" "${common[@]}" "trainer.default_local_dir=$CHECK_DIR/control" \
    trainer.resume_mode=resume_path "trainer.resume_from_path=$CHECK_DIR/original/global_step_$SAVE_AT"
fi
if [[ ( $PHASE == all || $PHASE == compare ) && ${DRY_RUN:-0} != 1 ]]; then
  # without a control run (PHASE=original then resumed, when time is short) the verdict is the
  # strict one: no noise level is known, so every gap counts as a difference
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m erl.tracking --check-dir "$CHECK_DIR" --step "$STEP"
fi
