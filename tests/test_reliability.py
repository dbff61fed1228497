"""Crash safety of the local trainer (docs/reliability.md): safe checkpoint loads, one timeline
per run folder, crash-tolerant metrics, a resume after any kill equal to an uninterrupted run."""

import copy
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from erl.core.config import ConfigError
from erl.fileio import CheckpointError, check_torch_file
from erl.tracking import Tracker, read_metrics
from erl.trainers.local.checkpoint import list_checkpoints, load_checkpoint
from erl.trainers.local.run import train
from erl.trainers.local.trainer import LocalTrainer

SKIP = ("time/", "throughput/", "system/", "perf/")  # wall clock, process memory and its collector differ run to run


def fast_cfg(out: Path, steps: int = 3, **trainer) -> dict:
    """One turn per attempt, every reflection stored (memory_threshold 0): a step is a few
    generate calls and each step changes the memory."""
    return {
        "seed": 0, "resume": False,
        "erl": {"mode": "erl", "n_attempt": 2, "max_turns": 1, "max_new_tokens": 6, "max_reflection_tokens": 8,
                "reflection_require_tag": False, "temperature": 1.0, "memory_threshold": 0.0},
        "trainer": {"total_steps": steps, "tasks_per_step": 2, "lr": 1e-3, "micro_batch_size": 8, "eval_every": 0,
                    "eval_tasks": 1, "save_every": 1, "keep_checkpoints": 2, "output_dir": str(out),
                    "loggers": ["console"], "progress": False, "precision": "fp32", "max_context_tokens": 512,
                    **trainer},
        "env": {"name": "frozenlake", "n_train": 4, "n_val": 1, "params": {"size_min": 2, "size_max": 2,
                                                                          "max_turns": 1}},
        "model": {"path": "tiny", "tiny": {"hidden": 16, "layers": 1, "heads": 2}},
    }


def resumed(cfg: dict, resume=True, **trainer) -> dict:
    out = copy.deepcopy(cfg)
    out["resume"] = resume
    out["trainer"].update(trainer)
    return out


def steps_of(out: Path) -> list[int]:
    return [r["step"] for r in read_metrics(out / "metrics.jsonl")]


class Payload:
    """What a crafted checkpoint file carries: unpickling it creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# ---- 1. loading a checkpoint runs no code --------------------------------------------------
def test_crafted_checkpoint_files_are_refused_before_anything_is_unpickled(tmp_path):
    from erl.cli.evaluate import evaluate

    cfg = fast_cfg(tmp_path / "run", steps=1)
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "step_1"
    marker = tmp_path / "payload_ran"
    # format 2: the optimizer file is loaded with weights_only=True
    good = (ckpt / "optimizer.pt").read_bytes()
    torch.save({"optimizer": Payload(marker)}, ckpt / "optimizer.pt")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(resumed(cfg, str(ckpt), total_steps=2))
    assert not marker.exists()
    (ckpt / "optimizer.pt").write_bytes(good)
    # format 1 (what erl wrote before): model.pt + a full-pickle optim.pt, here a crafted one
    old = tmp_path / "old" / "step_1"
    shutil.copytree(ckpt, old)
    torch.save(load_checkpoint(ckpt)["model"], old / "model.pt")
    for name in ("model.safetensors", "optimizer.pt", "rng.json"):
        (old / name).unlink()
    torch.save({"optimizer": Payload(marker)}, old / "optim.pt")
    with pytest.raises(CheckpointError, match="older erl.*optim.pt is a pickle"):
        train(resumed(cfg, str(old), total_steps=2))
    ev = {**fast_cfg(tmp_path / "ev"), "eval": {"checkpoint": str(old), "n": 1}}
    assert evaluate(ev)["eval/tasks"] == 1.0  # its weights still evaluate; optim.pt is never opened
    assert not marker.exists()


def test_verl_folder_check_refuses_code_and_accepts_numpy_rng(tmp_path):
    import numpy as np

    marker = tmp_path / "payload_ran"
    torch.save({"rng": {"numpy": np.random.get_state(), "cpu": torch.get_rng_state()}, "lr": [1e-6]},
               tmp_path / "extra_state.pt")  # what verl's extra_state holds
    check_torch_file(tmp_path / "extra_state.pt")
    torch.save({"model": Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"would call \['io.open'\]"):
        check_torch_file(tmp_path / "model.pt")
    import pickle

    (tmp_path / "raw.pt").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match="not a torch zip"):
        check_torch_file(tmp_path / "raw.pt")
    assert not marker.exists()


# ---- 2. a resume from an older checkpoint starts a new timeline ---------------------------
def test_resume_from_an_older_checkpoint_keeps_the_new_timeline(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = fast_cfg(out, steps=3, keep_checkpoints=3, loggers=["tensorboard"])
    train(cfg)  # old timeline: step_1, step_2, step_3
    old3 = read_metrics(out / "metrics.jsonl")[3]
    # branch from step 1 with keep 1, "killed" after step 2 of the new timeline
    train(resumed(cfg, str(out / "checkpoints" / "step_1"), total_steps=2, keep_checkpoints=1))
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_2"]  # the new one, not old step_3
    archive, = (out / "superseded").iterdir()  # the old timeline is kept, not deleted
    assert sorted(p.name for p in (archive / "checkpoints").iterdir()) == ["step_2", "step_3"]
    assert [r["step"] for r in read_metrics(archive / "metrics.jsonl")] == [0, 1, 2, 3]
    old_samples = read_metrics(archive / "samples.jsonl")  # the episodes as text go along
    assert [r["step"] for r in old_samples] == [1, 1, 2, 2, 3, 3]
    assert [r["step"] for r in read_metrics(out / "samples.jsonl")] == [1, 1, 2, 2]
    train(resumed(cfg, True, keep_checkpoints=1))  # continues the new timeline to step 3
    assert steps_of(out) == [0, 1, 2, 3]
    assert read_metrics(out / "samples.jsonl") == old_samples  # same seed: the same text, step for step
    new3 = read_metrics(out / "metrics.jsonl")[3]
    assert {k: v for k, v in new3.items() if not k.startswith(SKIP)} == \
        {k: v for k, v in old3.items() if not k.startswith(SKIP)}  # same seed: the branch recomputed it
    # TensorBoard: one point per step (purge_step hides the replaced timeline's points)
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/pg_loss")] == [1, 2, 3]


# ---- 3. metrics files ---------------------------------------------------------------------
def test_metrics_reader_drops_a_torn_last_line_and_names_damage(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "a": 1.0}\n{"step": 1, "a": 2.0}\n{"step": 2, "a"')
    assert [r["step"] for r in read_metrics(path)] == [0, 1]
    path.write_text('{"step": 0, "a": 1.0}\n{"step": 1, "a\n{"step": 2, "a": 3.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a metrics line"):
        read_metrics(path)


def test_truncate_after_is_atomic(tmp_path, monkeypatch):
    tracker = Tracker(tmp_path, [])
    for k in range(4):
        tracker.log(k, {"x": float(k)})
    before = tracker.path.read_bytes()

    def killed(*a):
        raise KeyboardInterrupt  # the kill arrives after the new file is written, before the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        tracker.truncate_after(1)
    assert tracker.path.read_bytes() == before  # the old code had emptied it by now
    monkeypatch.undo()
    tracker.truncate_after(1)
    assert [r["step"] for r in read_metrics(tracker.path)] == [0, 1]


# ---- 4. a crash before the first checkpoint -----------------------------------------------
def test_crash_before_the_first_checkpoint_restarts_with_resume_true(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = fast_cfg(out, steps=2, save_every=0, save_every_minutes=0)
    real = LocalTrainer.step

    def dies_on_step_2(self):
        if self.step_count == 1:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(LocalTrainer, "step", dies_on_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    assert steps_of(out) == [0, 1] and not list_checkpoints(out / "checkpoints")
    with pytest.raises(ConfigError, match=r"resume=true to continue it \(it has no checkpoint yet"):
        train(cfg)
    other = resumed(cfg)
    other["erl"]["tau"] = 0.5
    with pytest.raises(ConfigError, match="started with a different config: erl.tau"):
        train(other)
    train(resumed(cfg))
    assert steps_of(out) == [0, 1, 2] and [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_2"]


def test_save_every_minutes_saves_without_save_every(tmp_path, monkeypatch):
    from erl.trainers import driver
    from erl.trainers.local import run

    clock = iter(range(0, 10_000, 200))  # 200 s pass between two reads of the clock
    for module in (run, driver):  # run starts the time budget, the driver's loop reads it
        monkeypatch.setattr(module, "monotonic", lambda: float(next(clock)))
    out = tmp_path / "run"
    train(fast_cfg(out, steps=2, save_every=0, save_every_minutes=3, keep_checkpoints=0))
    # start 0 s; after step 1: 200 s >= 180 s -> save (clock reset at 400 s); step 2 is the last step
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_1", "step_2"]


# ---- fault injection: kill anywhere, resume=true, and get the uninterrupted run ---------------
class Killed(BaseException):
    """A kill: no `except Exception` in the trainer can catch it."""


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class Killer:
    """Counts the run folder's writes, fsyncs, renames and deletes, and the training steps; the
    op picked by `when` dies: an int (the n-th op), or (kind, path suffix, occurrence). A dying
    write puts half its bytes on disk first (a torn metrics line, a half-written checkpoint
    file); a dying delete removes one file first (a half-deleted checkpoint folder)."""

    def __init__(self, mp: pytest.MonkeyPatch, root: Path, when=None):
        self.ops: list[tuple[str, str]] = []
        real_write, real_fsync, real_replace, real_rmtree = os.write, os.fsync, os.replace, shutil.rmtree
        real_step = LocalTrainer.step
        root = str(root)

        def due(kind: str, path: str) -> bool:
            if not path.startswith(root):
                return False  # pytest's own files and the like
            self.ops.append((kind, path[len(root):]))
            if isinstance(when, int):
                return len(self.ops) == when
            if when is not None and kind == when[0] and path.endswith(when[1]):
                return sum(1 for k, p in self.ops if k == kind and p.endswith(when[1])) == when[2]
            return False

        def write(fd, data):
            if due("write", _fd_path(fd)):
                real_write(fd, bytes(data)[: len(data) // 2])
                raise Killed
            return real_write(fd, data)

        def fsync(fd):
            if due("fsync", _fd_path(fd)):
                raise Killed
            return real_fsync(fd)

        def replace(src, dst):
            if due("replace", str(dst)):
                raise Killed
            return real_replace(src, dst)

        def rmtree(path, *a, **k):
            if due("rmtree", str(path)):
                files = sorted(f for f in Path(path).rglob("*") if f.is_file())
                if files:
                    files[0].unlink()
                raise Killed
            return real_rmtree(path, *a, **k)

        def step(trainer):
            if due("step", f"{root}/step {trainer.step_count + 1}"):
                raise Killed
            return real_step(trainer)

        for obj, name, fn in ((os, "write", write), (os, "fsync", fsync), (os, "replace", replace),
                              (shutil, "rmtree", rmtree), (LocalTrainer, "step", step)):
            mp.setattr(obj, name, fn)


def snapshot(out: Path) -> dict:
    """What a run leaves: its last checkpoint (weights, optimizer, RNG, memory, cursor), the
    checkpoint folders, the metrics (without timings) and nothing half-done."""
    ckpts = list_checkpoints(out / "checkpoints")
    last = load_checkpoint(ckpts[-1])
    rows = [{k: v for k, v in r.items() if not k.startswith(SKIP)} for r in read_metrics(out / "metrics.jsonl")]
    return {"checkpoints": [p.name for p in ckpts], "model": last["model"], "optim": last["optim"],
            "rng": last["rng"], "memory": last["memory"], "trainer_state": last["trainer_state"], "metrics": rows,
            "leftovers": sorted(p.name for p in (out / "checkpoints").iterdir() if p not in ckpts)}


def assert_same(a, b, where="run"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run and the ops it performs (3 steps, a checkpoint after each, keep 2)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as mp:
        killer = Killer(mp, out.parent)
        train(fast_cfg(out))
    snap = snapshot(out)
    assert [r["step"] for r in snap["metrics"]] == [0, 1, 2, 3] and snap["checkpoints"] == ["step_2", "step_3"]
    assert len(snap["memory"]["entries"]) > 0  # every step stores reflections: the memory is compared too
    return snap, killer.ops


CASES = {
    "torn metrics line": [("write", "/run/metrics.jsonl", 3)],  # the line of step 2, half written
    "half-written checkpoint folder": [("write", "step_2.tmp/model.safetensors", 1)],
    "checkpoint rename": [("replace", "checkpoints/step_2", 1)],
    "half-deleted old checkpoint": [("rmtree", "step_1.del", 1)],
    "between steps": [("step", "step 3", 1)],
    # before the first checkpoint counts; then the resume dies while it rewrites the metrics
    "crash before the first checkpoint, then during the resume": [("fsync", "step_1.tmp", 1),
                                                                  ("replace", "/run/metrics.jsonl", 1)],
    "random op A": ["random"], "random op B": ["random"], "random op C": ["random"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_killed_anywhere_then_resumed_equals_the_uninterrupted_run(case, reference, tmp_path):
    expected, ops = reference
    out = tmp_path / "run"
    cfg = fast_cfg(out)
    for when in CASES[case]:
        if when == "random":
            # three distinct ops, fixed by the seed so that a failure reproduces
            when = random.Random(0).sample(range(1, len(ops) + 1), 3)["ABC".index(case[-1])]
        with pytest.MonkeyPatch.context() as mp:
            killer = Killer(mp, tmp_path, when)
            with pytest.raises(Killed):
                train(cfg)
        if isinstance(when, int):
            print(f"{case}: killed at op {when} of {len(ops)}: {killer.ops[-1]}")
        cfg = resumed(fast_cfg(out))
    train(cfg)
    assert_same(expected, snapshot(out))


def test_kill_9_of_a_real_process_then_resume(reference, tmp_path):
    """A real SIGKILL (no exception handler, no finally) in the middle of step 2's checkpoint."""
    expected, _ = reference
    out = tmp_path / "run"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_reliability import fast_cfg
from erl.trainers.local.run import train
real = os.write
def write(fd, data):
    if os.readlink(f"/proc/self/fd/{{fd}}").endswith("step_2.tmp/optimizer.pt"):
        real(fd, bytes(data)[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(fd, data)
os.write = write
train(fast_cfg({str(out)!r}))
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out / "checkpoints" / "step_2.tmp").is_dir()  # died mid-save
    train(resumed(fast_cfg(out)))
    assert_same(expected, snapshot(out))
