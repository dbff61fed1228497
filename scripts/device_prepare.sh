#!/usr/bin/env bash
# Prepare the offline GPU machine (the `run` device tool) for the verl trainer; source it:
#   source scripts/device_prepare.sh
# - unpacks the overlay built by scripts/build_overlay.sh (.ovl/overlay.tar.xz, carried) into /tmp/ov,
#   and .ovl/agents.tar.xz (SET=agents: LangGraph, bm25s) or .ovl/local.tar.xz (SET=local: Hydra and
#   gguf, for the local trainer without verl) when carried,
# - collects the SmolLM2 GGUF parts carried in .model/p*/ into /tmp/m (they survive while the
#   machine stays warm, so the parts can come in consecutive calls),
# - once all parts are there: joins them, checks the sha256 and converts the model into
#   /tmp/smollm2 (a Hugging Face folder), exporting SMOLLM=/tmp/smollm2,
# - builds a tiny random model folder /tmp/tiny (TINY=/tmp/tiny) for fast smoke runs.
# Here (before the calls): bash scripts/build_overlay.sh; mkdir -p .model/p1 .model/p2 .model/p3;
#   python -m erl.cli.models gguf smollm2-135m-instruct --out .model && split -n 3 -d <gguf> part-
GGUF_SHA=${GGUF_SHA:-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53}
GGUF_PARTS=${GGUF_PARTS:-3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# each archive is unpacked when carried and not yet there (by a package of its own: the small local
# overlay unpacked first must not hide verl's)
if [ ! -d /tmp/ov/site/verl ] && [ -f "$ROOT/.ovl/overlay.tar.xz" ]; then
  mkdir -p /tmp/ov && tar -xJf "$ROOT/.ovl/overlay.tar.xz" -C /tmp/ov && echo "overlay unpacked"
fi
if [ ! -d /tmp/ov/site/hydra ] && [ -f "$ROOT/.ovl/local.tar.xz" ]; then  # SET=local build_overlay.sh
  mkdir -p /tmp/ov && tar -xJf "$ROOT/.ovl/local.tar.xz" -C /tmp/ov && echo "local overlay unpacked"
fi
if [ ! -d /tmp/ov/site/langgraph ] && [ -f "$ROOT/.ovl/agents.tar.xz" ]; then  # SET=agents build_overlay.sh
  mkdir -p /tmp/ov && tar -xJf "$ROOT/.ovl/agents.tar.xz" -C /tmp/ov && echo "agents overlay unpacked"
fi
export PYTHONPATH="$ROOT:/tmp/ov/site" RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HYDRA_FULL_ERROR=1 RAY_DEDUP_LOGS=0
mkdir -p /tmp/m
for p in "$ROOT"/.model/p*/part-*; do [ -f "$p" ] && [ ! -f "/tmp/m/$(basename "$p")" ] && cp "$p" /tmp/m/; done
echo "gguf parts on this machine: $(ls /tmp/m | grep -c '^part-')/$GGUF_PARTS"

if [ ! -f /tmp/smollm2/config.json ] && [ "$(ls /tmp/m | grep -c '^part-')" = "$GGUF_PARTS" ]; then
  cat /tmp/m/part-* > /tmp/m/s.gguf
  if [ "$(sha256sum /tmp/m/s.gguf | cut -d' ' -f1)" != "$GGUF_SHA" ]; then
    echo "GGUF sha256 mismatch" >&2
  else
    python3 -c "from erl.models.convert import convert_gguf; convert_gguf('/tmp/m/s.gguf', '/tmp/smollm2', dtype='bfloat16')" \
      && echo "converted -> /tmp/smollm2"
  fi
fi
[ -f /tmp/smollm2/config.json ] && export SMOLLM=/tmp/smollm2

if [ ! -f /tmp/tiny/config.json ]; then
  python3 - <<'EOF'
from erl.models.tiny import build_tiny_model, build_tiny_tokenizer
tok = build_tiny_tokenizer()
build_tiny_model(tok, seed=0).save_pretrained("/tmp/tiny")
tok.save_pretrained("/tmp/tiny")
EOF
fi
export TINY=/tmp/tiny
# Settings every run on this machine needs: no flash-attn here (sdpa, padded batches).
export DEVICE_OVERRIDES="+actor_rollout_ref.model.override_config.attn_implementation=sdpa actor_rollout_ref.model.use_remove_padding=false actor_rollout_ref.actor.use_torch_compile=false actor_rollout_ref.ref.fsdp_config.param_offload=false"
# The same for verl's SFT trainer (scripts/early_sft_verl.sh), whose keys sit at the config's top level.
export DEVICE_SFT_OVERRIDES="+model.override_config.attn_implementation=sdpa model.use_remove_padding=false engine.use_torch_compile=false"
