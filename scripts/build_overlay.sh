#!/usr/bin/env bash
# Build a Python-package overlay that brings verl + ray + hydra (and what they import)
# onto the offline GPU machine: Python 3.12 (/opt/torch/.venv), torch 2.11, transformers 5.17,
# numpy 2.x, pandas, pyarrow, accelerate, peft, aiohttp, grpcio, cupy, ... already there.
#
# Output: $OUTDIR/overlay.tar.xz holding site/ (a flat site-packages dir for PYTHONPATH).
# Usage:  bash scripts/build_overlay.sh [OUTDIR]   (default: .ovl/ at the repository root, git-ignored;
#         never commit the built overlay)
#         SET=agents bash scripts/build_overlay.sh   -> agents.tar.xz: LangGraph / langchain-core /
#         bm25s for the HotpotQA and LangGraph experiments (a second, small archive; unpack both)
#         SET=local bash scripts/build_overlay.sh    -> local.tar.xz: Hydra and gguf only, for the local
#         trainer and the benchmarks (small enough to travel beside two of the model's parts)
# Needs:  pip with PyPI access, any local python3 (>=3.8), xz. Re-runnable: starts from scratch.
# On the device:  mkdir -p /tmp/ov && tar -xJf .ovl/overlay.tar.xz -C /tmp/ov
#                 export PYTHONPATH=$PWD:/tmp/ov/site RAY_AUTH_MODE=disabled
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "${1:-$ROOT/.ovl}"
OUTDIR=$(cd "${1:-$ROOT/.ovl}" && pwd)
WORK=$(mktemp -d /tmp/ovbuild.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PY=${PY:-python3}
PIPQ=(--disable-pip-version-check -q)

# Wheels must match the DEVICE's interpreter (CPython 3.12, x86-64 glibc), not this one.
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux_2_28_x86_64 --platform any)

# Pinned, explicit list (--no-deps): only what the device LACKS. Never torch, nvidia-*, triton,
# transformers, vllm, sglang, numpy, pandas, pyarrow, accelerate, peft, aiohttp, grpcio, ...:
# shipping a package the device already has would shadow its copy via PYTHONPATH.
PKGS=(
  verl==0.9.1
  ray==2.60.0                      # verl: ray[default]>=2.41 (only core ray needed; deps below)
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  hydra-core==1.3.8 omegaconf==2.3.0          # hydra 1.3.x needs omegaconf<2.4
  tensordict==0.10.0 pyvers==0.1.0 orjson==3.13.0 importlib-metadata==8.9.0   # verl: tensordict<=0.10.0
  codetiming==1.4.0 cachetools==8.0.2 torchdata==0.11.0 pylatexenc==2.11
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  # imported by verl.workers.rollout.utils / agent loop / checkpoint engines (found by import sweeps):
  uvicorn==0.54.0 fastapi==0.165.0 starlette==1.10.0 opentelemetry-api==1.45.2
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  pyzmq==27.3.0 nvtx==0.2.17
  # erl itself travels as source (PYTHONPATH=repo root); what it needs beyond the device image:
  gguf==0.19.0                     # reading the SmolLM2 GGUF (erl.models.convert)
)
SET=${SET:-core}
if [ "$SET" = agents ]; then
  # The dependency closure (pip install --dry-run --report) minus what an import probe found on the
  # device (Nov 2026); scipy, httpx, requests, yaml, xxhash,
  # packaging are there, orjson and pydantic come with the core overlay.
  PKGS=(
    langgraph==1.2.24 langgraph-checkpoint==4.3.2 langgraph-prebuilt==1.1.3 langgraph-sdk==0.4.14
    langchain-core==1.8.3 langchain-protocol==0.0.20 langsmith==0.15.1
    jsonpatch==1.33 jsonpointer==3.1.1 tenacity==9.2.1 ormsgpack==1.13.1 uuid-utils==0.19.0
    zstandard==0.25.0 requests-toolbelt==1.0.0 sniffio==1.3.1
    distro==1.9.0 httpx2==2.16.2 httpcore2==2.16.2 websockets==17.4 truststore==0.10.5   # langsmith's
    bm25s==0.3.16
  )
elif [ "$SET" = local ]; then
  # The local trainer and the benchmarks on the device, without verl: erl-train's config (Hydra)
  # and the GGUF reader that converts the carried model (a few hundred KiB, beside the model's parts)
  PKGS=(hydra-core==1.3.8 omegaconf==2.3.0 gguf==0.19.0)
elif [ "$SET" != core ]; then
  echo "$0: SET must be core, agents or local, got '$SET'" >&2; exit 2
fi
# Deliberately left out: wandb (20+ MiB, only with trainer.logger=wandb), vllm/sglang (too big),
# transfer_queue (verl.trainer.ppo.v1 only), mathruler/openai/modelopt (optional paths).

mkdir -p "$WORK/wheels" "$WORK/site"
echo "[1/5] downloading wheels for cp312 manylinux x86_64"
pip download "${PIPQ[@]}" --no-deps "${PLAT[@]}" -d "$WORK/wheels" "${PKGS[@]}"

# antlr4-python3-runtime 4.9.3 (hydra's parser runtime) exists only as an sdist: build a pure wheel here.
if [ "$SET" != agents ]; then
  echo "[2/5] building antlr4-python3-runtime==4.9.3 wheel from sdist (pure python)"
  pip wheel "${PIPQ[@]}" --no-deps --no-binary=:all: -w "$WORK/wheels" antlr4-python3-runtime==4.9.3
fi

echo "[3/5] installing into a flat target dir"
pip install "${PIPQ[@]}" --no-deps --no-compile "${PLAT[@]}" --target "$WORK/site" "$WORK"/wheels/*.whl

echo "[4/5] stripping what is not needed at run time"
S="$WORK/site"
rm -rf "$S"/ray/jars "$S"/ray/dashboard/client/build "$S"/ray/rllib "$S"/ray/cpp \
       "$S"/ray/core/src/ray/raylet/raylet.debug "$S"/bin
find "$S" -depth -type d \( -name __pycache__ -o -name tests -o -name test -o -name testing \) \
     -not -path '*/numpy/*' -exec rm -rf {} +
# ray.tune/train/data/serve python trees stay (verl imports ray.util/ray.experimental only,
# but user code may touch them). Strip debug symbols from native libs if strip(1) is present.
if command -v strip >/dev/null; then
  find "$S" -name '*.so*' -type f -exec strip --strip-unneeded {} + 2>/dev/null || true
  for b in "$S"/ray/core/src/ray/gcs/gcs_server "$S"/ray/core/src/ray/raylet/raylet; do
    [ -f "$b" ] && strip --strip-unneeded "$b" 2>/dev/null || true
  done
fi
du -sh "$S"

NAME=$([ "$SET" = core ] && echo overlay || echo "$SET")
echo "[5/5] packing"
tar -C "$WORK" -cf - site | xz -T0 -9 > "$OUTDIR/$NAME.tar.xz"
ls -la "$OUTDIR/$NAME.tar.xz"
(cd "$WORK/wheels" && ls -1) > "$OUTDIR/$NAME.wheels.txt"
echo "done: $OUTDIR/$NAME.tar.xz ($(du -m "$OUTDIR/$NAME.tar.xz" | cut -f1) MiB); wheel list in $NAME.wheels.txt"
