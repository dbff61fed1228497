"""Checkpoints that resume exactly: model, optimizer, scheduler, RNG, data cursor, memory.

Layout of `checkpoints/step_K/` (format 2), every file safe to load from an untrusted source:
  model.safetensors   trainable weights (safetensors: raw tensors, no code)
  optimizer.pt        optimizer + scheduler state, loaded with torch.load(weights_only=True)
  rng.json            python / numpy / torch RNG states
  trainer_state.json  step, task cursor, seed, format
  config.json         the run's config;  memory.json  the reflection memory (ERL modes)
A checkpoint is written into `step_K.tmp/`, each file fsynced, and renamed to `step_K/` only
when complete (then the folder is fsynced): a crash mid-save never leaves a checkpoint that
looks valid. Old checkpoints leave through `step_J.del/`, so a crash mid-delete does not either.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from erl.fileio import CheckpointError, fsync_dir, write_file

FORMAT = 2
# Settings that may change between a run and its resumption without changing what it computes.
RESUMABLE_KEYS = {"trainer.total_steps", "trainer.eval_every", "trainer.save_every", "trainer.keep_checkpoints",
                  "trainer.save_every_minutes", "trainer.output_dir", "trainer.loggers", "trainer.progress",
                  "trainer.device", "resume", "trainer.gen_batch_size",
                  "trainer.time_budget_s", "trainer.max_consecutive_skips"}


def rng_state() -> dict:
    """Every generator as JSON numbers (nothing to unpickle on the way back)."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


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


def checkpoint_step(path: Path) -> int | None:
    """K for a complete-looking `step_K` folder name, else None (step_K.tmp, step_K.del, ...)."""
    head, _, num = Path(path).name.partition("_")
    return int(num) if head == "step" and num.isdigit() else None


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(done, key=checkpoint_step)


def checkpoints_after(root: Path, step: int) -> list[Path]:
    return [p for p in list_checkpoints(root) if checkpoint_step(p) > step]


def remove_leftovers(root: Path) -> list[Path]:
    """Half-written (`.tmp`) and half-deleted (`.del`) folders a crash left behind."""
    gone = [p for p in root.glob("step_*") if p.is_dir() and p.suffix in (".tmp", ".del")] if root.is_dir() else []
    for p in gone:
        shutil.rmtree(p)
    return gone


def _retire(folder: Path) -> None:
    """Delete a checkpoint folder so that no crash leaves it looking complete."""
    gone = folder.with_name(folder.name + ".del")
    if gone.exists():
        shutil.rmtree(gone)
    os.replace(folder, gone)
    fsync_dir(folder.parent)
    shutil.rmtree(gone)


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(root: Path, step: int, *, model_state: dict, optimizer: Any, scheduler: Any,
                    trainer_state: dict, memory_state: dict | None, config: dict, keep: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # clone: tied weights share storage, which safetensors refuses to write twice
    write_file(tmp / "model.safetensors", save_safetensors({k: v.contiguous().clone() for k, v in model_state.items()}))
    write_file(tmp / "optimizer.pt", _torch_bytes({"optimizer": optimizer.state_dict(),
                                                   "scheduler": scheduler.state_dict()}))
    write_file(tmp / "rng.json", json.dumps(rng_state()).encode())
    write_file(tmp / "trainer_state.json", json.dumps({**trainer_state, "format": FORMAT}, indent=1).encode())
    write_file(tmp / "config.json", json.dumps(config, indent=1, default=str).encode())
    if memory_state is not None:
        write_file(tmp / "memory.json", json.dumps(memory_state).encode())
    fsync_dir(tmp)
    if final.exists():
        _retire(final)
    os.replace(tmp, final)
    fsync_dir(root)
    if keep > 0:  # the newest `keep` up to this step; a later step_J (J > step) is never this run's to delete
        older = [p for p in list_checkpoints(root) if checkpoint_step(p) < step]
        for old in older[: max(len(older) - (keep - 1), 0)]:
            _retire(old)
    return final


NEEDED = ["model.safetensors", "optimizer.pt", "rng.json", "trainer_state.json", "config.json"]


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _checkpoints_in(root: Path) -> str:
    if not root.is_dir():
        return f"{root} does not exist either"
    found = list_checkpoints(root)
    return f"checkpoints in {root}: {', '.join(p.name for p in found)}" if found else f"{root} holds no checkpoint"


def load_checkpoint(path: Path, training: bool = True) -> dict:
    """Everything in a checkpoint folder; a clear error if any part is missing, corrupt or unsafe.

    `training=False` (evaluation) reads only the weights and the config; it also reads the
    weights of a format-1 checkpoint (model.pt, a weights_only torch file) but never its
    optim.pt, a full pickle that could run code."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist; {_checkpoints_in(path.parent)}")
    old = not (path / "model.safetensors").exists() and (path / "model.pt").is_file()
    if old and training:
        raise CheckpointError(
            f"checkpoint {path} was written by an older erl (format 1): its optim.pt is a pickle that can run "
            "arbitrary code when loaded, so it is not read. Its weights still evaluate (erl-eval "
            f"eval.checkpoint={path}); to train on, start a new run in another trainer.output_dir")
    needed = (["model.pt"] if old else ["model.safetensors"]) + ["config.json"] + (NEEDED[1:4] if training else [])
    missing = [n for n in needed if not (path / n).is_file()]
    if missing and (path / "checkpoints").is_dir():  # a run's folder, not one of its checkpoints
        raise CheckpointError(f"{path} is a run's folder, not a checkpoint; {_checkpoints_in(path / 'checkpoints')}")
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
    try:
        out = {"config": _json(path / "config.json"), "optim": None, "rng": None, "memory": None,
               "trainer_state": _json(path / "trainer_state.json") if (path / "trainer_state.json").is_file() else None}
        if old:
            out["model"] = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        else:
            out["model"] = load_safetensors((path / "model.safetensors").read_bytes())
        if training:
            out["optim"] = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
            out["rng"] = _json(path / "rng.json")
            mem = path / "memory.json"
            out["memory"] = _json(mem) if mem.is_file() else None
    except Exception as exc:  # torch/json/safetensors raise many kinds; the user needs the file and cause
        raise CheckpointError(f"checkpoint {path} is corrupt: {type(exc).__name__}: {exc}") from exc
    if out["memory"] is not None:
        check_memory_state(out["memory"], path / "memory.json")
    return out


def check_memory_state(state: Any, where: Path) -> None:
    """A memory file that parses as JSON but is not a ReflectionMemory state is found when the
    checkpoint is read, not when the trainer loads it after the model is built."""
    from erl.memory import ReflectionMemory

    try:
        ReflectionMemory().load_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"{where}: not a reflection memory state: {exc}") from None
