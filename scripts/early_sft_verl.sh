#!/usr/bin/env bash
# One Early Experience SFT stage (il | iwm | sr) on verl's own SFT trainer (verl.trainer.sft_trainer:
# FSDP over every GPU of the node), on the same records as the local trainer: `erl-early export`
# writes the stage's chats to parquet and verl's MultiTurnSFTDataset trains their assistant turn.
#   DATA=data/early/frozenlake MODEL_PATH=/models/Qwen3-4B-Instruct-2507 bash scripts/early_sft_verl.sh il
#   # IWM -> IL: the IL stage starts from the IWM stage's Hugging Face folder
#   DATA=... MODEL_PATH=/models/Qwen3-4B-Instruct-2507 bash scripts/early_sft_verl.sh iwm
#   DATA=... MODEL_PATH=outputs/early_verl/frozenlake-iwm/final OUT=outputs/early_verl/frozenlake-iwm-il \
#     bash scripts/early_sft_verl.sh il
# Result: $OUT/final, a link to the last global_step_N/huggingface. Start RL from it:
#   MODEL_PATH=outputs/early_verl/frozenlake-il/final bash scripts/frozenlake_erl.sh
#
# Environment: DATA (a folder from `erl-early build`), MODEL_PATH, OUT (default
# outputs/early_verl/<DATA's name>-<stage>), N_GPUS_PER_NODE=8, EPOCHS=2, LR=1e-5, BATCH_SIZE=64,
# MICRO_BATCH_SIZE=4, MAX_LENGTH=2048, PYTHON=python3, DRY_RUN=1 (print the commands only).
# Extra arguments are Hydra overrides of verl's sft_trainer_engine config.
set -euo pipefail
STAGE=${1:?usage: early_sft_verl.sh il|iwm|sr [verl overrides]}
shift
case "$STAGE" in il|iwm|sr) ;; *) echo "$0: the stage must be il, iwm or sr, got '$STAGE'" >&2; exit 2;; esac
DATA=${DATA:?set DATA to a folder written by erl-early build}
MODEL_PATH=${MODEL_PATH:-$HOME/models/Qwen3-4B-Instruct-2507}
OUT=${OUT:-outputs/early_verl/$(basename "$DATA")-$STAGE}
N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-8}
PYTHON=${PYTHON:-python3}
PARQUET="$DATA/verl/$STAGE.parquet"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

EXPORT=("$PYTHON" -m erl.cli.early export "stage=$STAGE" "data=$DATA" "out=$PARQUET")
CMD=(torchrun --standalone --nnodes=1 "--nproc_per_node=$N_GPUS_PER_NODE" -m verl.trainer.sft_trainer
     "data.train_files=$PARQUET"
     data.messages_key=messages
     "data.max_length=${MAX_LENGTH:-2048}"
     data.truncation=error
     "data.train_batch_size=${BATCH_SIZE:-64}"
     "data.micro_batch_size_per_gpu=${MICRO_BATCH_SIZE:-4}"
     "model.path=$MODEL_PATH"
     "optim.lr=${LR:-1e-5}"
     "trainer.total_epochs=${EPOCHS:-2}"
     "trainer.default_local_dir=$OUT"
     trainer.project_name=erl-early
     "trainer.experiment_name=$(basename "$OUT")"
     "trainer.logger=[console]"
     trainer.nnodes=1
     "trainer.n_gpus_per_node=$N_GPUS_PER_NODE"
     "checkpoint.save_contents=[model,optimizer,extra,hf_model]"
     "$@")

if [ "${DRY_RUN:-0}" = "1" ]; then
  printf '%q ' "${EXPORT[@]}"; echo
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
"${EXPORT[@]}"
"${CMD[@]}"
LAST=$(ls -d "$OUT"/global_step_* | sort -t_ -k3 -n | tail -1)
ln -sfn "$(cd "$LAST/huggingface" && pwd)" "$OUT/final"
echo "early_sft_verl: $STAGE -> $OUT/final"
