#!/usr/bin/env bash
# Twenty-fifth session, one H200: which phase makes ERL / RLVR rise along a run (the twenty-fourth
# session saw the ratio climb from ~1.5 to ~1.9 over 8 steps). Parts, in the order given:
#   step[N]   benchmarks/local_step.py, 2 warm-up steps then STEPS (14) measured, ERL and RLVR
#             alternating; its per-step lines carry each phase, the engine's seconds, the update's
#             tokens, turns, first-attempt success, the reflection rate and the memory's size
#   gpu_tests the rollout engine's GPU tests (run_part.sh), among them a reset engine against a new one
#   reset_tests  only the reset engine's CUDA tests, in a process of their own (compiled code is per process)
#   local_resume  scripts/local_resume_check.sh: erl-train 3 steps with a checkpoint at step 2, then two
#             runs resumed from it side by side (resumed, control), then step 3 compared;
#             LOCAL_SETS: its overrides (default the GPU preset on /tmp/smollm2)
#   probe     resume_probe.py: the original, resumed, control and an engine with a history, in one process
#   probe_plain  the same without the compiled regions and flex (the efficient kernel, as verl's workers)
#   verl_driver / verl_workers  the verl trainer (scripts/launch_verl.sh frozenlake_erl, +scale=small_gpu,
#             VERL_GPUS (1) GPUs, STEPS_VERL (6) steps, no eval or checkpoint) with the episodes on the driver
#             (collect_in_workers=false) or in the workers (=true, the hf default since the twenty-seventh
#             session); metrics into $OUT/NAME.jsonl
#             (NAME: the part, with VERL_TAG after it when set); VERL_EXTRA: more overrides (say the hf
#             rollout's kernels)
#   bf16      benchmarks/rollout.py's preset=gpu kernels against the trainer's teacher-forced pass and an
#             fp32 forward (the issue's bf16 log-prob figure), fp32 model, the other variants skipped
#   bf16_plain  the same on a bf16 model: the engine's eager forward and its CUDA graphs, without autocast
#             (both print the trainer's bf16 pass against itself on the same rows in another batch)
#   padded_width  benchmarks/padded_width.py: the same rows' bf16 forward at other padded widths (the floor's cause)
#   copies    benchmarks/rollout.py --workload erl: the engine on the local trainer's rollout copy (fp32 norms
#             and embedding, bf16 linears, autocast) and on verl's hf copy (all bf16, no autocast), alternating
#             (COPIES: the --engines list)
#   profile_erl / profile_rlvr  benchmarks/rollout.py --workload erl, the engine only, cProfile of its
#             collect (functions by own time, then cumulative): where ERL's host time goes beyond RLVR's
#             (for verl: the overlay, `GGUF_PARTS=4 source scripts/device_prepare.sh` first)
# Needs /tmp/smollm2 (GGUF_PARTS=4 source scripts/device_prepare.sh). Output: $OUT/NAME.txt, .json
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
OUT=${OUT:-outputs/ratio_rise}
source docs/gpu/run_part.sh  # $OUT made; gpu=(...); run NAME LIMIT COMMAND...; local_step
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader >> "$OUT/run.log"
for what in "$@"; do  # parts in the order given
  case $what in
    step*) STEPS=${STEPS:-14} local_step "$what" --out "$OUT/$what.json" ;;
    gpu_tests) gpu_tests ;;
    reset_tests) run reset_tests 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_rollout_engine.py \
                   -k reset_engine_on_cuda ;;
    probe_plain) run resume_probe_plain 400 python3 docs/gpu/ratio_rise/resume_probe.py preset=gpu model.path=/tmp/smollm2 \
                   trainer.rollout_regions=false trainer.rollout_decode_attention=efficient ;;
    probe) run resume_probe 400 python3 docs/gpu/ratio_rise/resume_probe.py ${LOCAL_SETS:-preset=gpu model.path=/tmp/smollm2} ;;
    local_resume)  # scripts/local_resume_check.sh (sessions 25-26 ran the same steps inline here)
      run local_resume 600 env PARALLEL=1 CHECK_DIR=/tmp/lr SAVE_AT=2 bash scripts/local_resume_check.sh \
        ${LOCAL_SETS:-preset=gpu model.path=/tmp/smollm2} ;;
    bf16) run bf16 300 python3 benchmarks/rollout.py --model /tmp/smollm2 --dtype fp32 \
            --skip eager,graphs,compiled,dynamic,static ;;
    bf16_plain) run bf16_plain 300 python3 benchmarks/rollout.py --model /tmp/smollm2 --dtype bf16 \
            --skip compiled,dynamic,static,preset ;;
    padded_width) run padded_width 120 python3 benchmarks/padded_width.py --device cuda --model /tmp/smollm2 ;;
    copies) collect copies --engines "${COPIES:-engine,engine-bf16,engine,engine-bf16}" ;;
    profile_erl) collect profile_erl --engines engine --profile-host collect ;;
    profile_rlvr) collect profile_rlvr --engines engine --profile-host collect --set erl.mode=rlvr ;;
    verl_driver|verl_workers)
      inw=false; [ "$what" = verl_workers ] && inw=true
      export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
      name=$what${VERL_TAG:-}
      rm -rf "/tmp/$name"
      MODEL_PATH=/tmp/smollm2 ROLLOUT=hf EXPERIMENT=frozenlake_erl N_GPUS_PER_NODE=${VERL_GPUS:-1} run "$name" 540 \
        bash scripts/launch_verl.sh +scale=small_gpu +env.params.size_max=3 +env.params.max_turns=4 \
        "trainer.total_training_steps=${STEPS_VERL:-6}" trainer.val_before_train=false trainer.test_freq=-1 \
        trainer.save_freq=-1 trainer.resume_mode=disable "trainer.default_local_dir=/tmp/$name" \
        "erl_trainer.collect_in_workers=$inw" ${VERL_EXTRA:-}
      cp "/tmp/$name/metrics.jsonl" "$OUT/$name.jsonl" ;;
    *) echo "unknown part $what" >&2; exit 2 ;;
  esac
done
