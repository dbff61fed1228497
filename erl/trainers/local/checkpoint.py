"""Checkpoints that resume exactly: model, optimizer, scheduler, RNG, data cursor, memory.

A checkpoint is written into `step_K.tmp/` and renamed to `step_K/` only when complete,
so a crash mid-save never leaves a checkpoint that looks valid.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Settings that may change between a run and its resumption without changing what it computes.
RESUMABLE_KEYS = {"trainer.total_steps", "trainer.eval_every", "trainer.save_every", "trainer.keep_checkpoints",
                  "trainer.output_dir", "trainer.loggers", "trainer.progress", "trainer.device", "resume",
                  "trainer.gen_batch_size"}


class CheckpointError(RuntimeError):
    pass


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def flatten(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_mismatch(saved: dict, current: dict) -> list[str]:
    a, b = flatten(saved), flatten(current)
    keys = sorted((set(a) | set(b)) - RESUMABLE_KEYS)
    return [f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(root: Path, step: int, *, model_state: dict, optimizer: Any, scheduler: Any,
                    trainer_state: dict, memory_state: dict | None, config: dict, keep: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(model_state, tmp / "model.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
               tmp / "optim.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
    if memory_state is not None:
        (tmp / "memory.json").write_text(json.dumps(memory_state))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoints_in(root: Path) -> str:
    if not root.is_dir():
        return f"{root} does not exist either"
    found = list_checkpoints(root)
    return f"checkpoints in {root}: {', '.join(p.name for p in found)}" if found else f"{root} holds no checkpoint"


def load_checkpoint(path: Path) -> dict:
    """Everything in a checkpoint directory; a clear error if any part is missing or corrupt."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist; {_checkpoints_in(path.parent)}")
    needed = ["model.pt", "optim.pt", "trainer_state.json", "config.json"]
    missing = [n for n in needed if not (path / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
    try:
        out = {
            "model": torch.load(path / "model.pt", map_location="cpu", weights_only=True),
            "optim": torch.load(path / "optim.pt", map_location="cpu", weights_only=False),
            "trainer_state": json.loads((path / "trainer_state.json").read_text()),
            "config": json.loads((path / "config.json").read_text()),
        }
        mem = path / "memory.json"
        out["memory"] = json.loads(mem.read_text()) if mem.is_file() else None
    except Exception as exc:  # torch/json raise many kinds; the user needs the file and cause
        raise CheckpointError(f"checkpoint {path} is corrupt: {type(exc).__name__}: {exc}") from exc
    return out
