"""A stage's result as a starting policy: `final/`, a Hugging Face folder (safetensors).

The folder works three ways: `model.init_from=<stage dir>` loads its weights into the model
that `model.path` builds (local trainer, erl-eval, the next stage); `model.path=<final dir>`
loads it as a model of its own; and verl can read it as `actor_rollout_ref.model.path`.
LoRA adapters are merged before saving, so the next run may train with or without LoRA.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from erl.fileio import CheckpointError

FINAL = "final"
WEIGHTS = "model.safetensors"
META = "early.json"


def resolve_init(path: str | Path) -> Path:
    """A stage's output dir or its final/ folder -> the folder that holds the weights."""
    p = Path(str(path)).expanduser()
    if (p / FINAL / WEIGHTS).is_file():
        p = p / FINAL
    if not (p / WEIGHTS).is_file():
        raise CheckpointError(f"model.init_from: {path} holds no {WEIGHTS}; give a finished stage's output "
                              f"dir (erl-early train trainer.output_dir) or its {FINAL}/ folder")
    return p


def load_init(model: Any, path: str | Path) -> Path:
    """Overwrite every weight of `model` with the stage's; a shape or name mismatch is an error."""
    from safetensors.torch import load_model

    folder = resolve_init(path)
    try:
        load_model(model, str(folder / WEIGHTS), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"model.init_from: {folder / WEIGHTS} does not fit the model built from model.path "
                              f"(same architecture and size needed): {' '.join(first[:3])[:500]}") from exc
    return folder


def save_final(model: Any, tokenizer: Any, out: str | Path, meta: dict) -> Path:
    """Write out/final/ (through final.tmp/, so a half-written folder never looks finished)."""
    out = Path(out)
    final, tmp = out / FINAL, out / (FINAL + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "merge_and_unload"):  # peft: fold the adapters into the base weights
        model = model.merge_and_unload()
    # one shard: load_init reads a single file, and a 135M-4B model fits in one
    model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="1000GB")
    tokenizer.save_pretrained(str(tmp))
    (tmp / META).write_text(json.dumps(meta, indent=1, default=str))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
