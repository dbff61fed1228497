# The IL-with-action-tags warm start's recipe (sourced, not run), shared by scripts/il_tag_rl.sh
# and the GPU call scripts: the solver's replies as <action>X</action> on the RL runs' 1,024
# training tasks, one alternative a state and no rationales (IL reads neither), 6 epochs.
#   il_tag_recipe STAGE      STAGE il | il_rehearse (adds the base model's own reflections to the
#                            mix: early.reflections=true); exports REFL, and BUILD_ARGS / STAGE_ARGS
#                            unless the caller set them (ENV_ARGS joins the build's env overrides)
il_tag_recipe() {
  case "$1" in
    il) REFL=false ;;
    il_rehearse) REFL=true ;;
    *) echo "il_tag_recipe: STAGE must be il or il_rehearse, got '$1'" >&2; return 2 ;;
  esac
  export REFL
  export BUILD_ARGS=${BUILD_ARGS:-"n_tasks=1024 env.params.action_tag=true early.k=1 early.rationales=false early.reflections=$REFL gen_batch_size=512 ${ENV_ARGS:-}"}
  export STAGE_ARGS=${STAGE_ARGS:-"trainer.epochs=6 trainer.batch_size=32 trainer.micro_batch_size=32"}
}
