"""Files that survive a crash, and loads that cannot run code.

Every byte a trainer writes goes through `write_file`: one `os.write` loop, then fsync, so
what a kill (or a power cut after a checkpoint counted as saved) leaves on disk is exactly
a prefix of what was being written. `atomic_write` adds write-new-then-rename: the target
holds the old content or the new one, never a mix or nothing. `move_aside` is how a run
gives up files without deleting them.

`check_torch_file` lists the Python globals a torch file would build when unpickled, without
running any, and refuses the file unless all are plain data (torch's own weights_only list,
plus numpy arrays for RNG states): verl's checkpoint loader unpickles with
weights_only=False, so a folder a user downloaded is checked before it gets there.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path


class CheckpointError(RuntimeError):
    pass


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames and new names inside `path` durable (POSIX: the folder's own entry list)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under `root` (what another program, verl's workers, wrote)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def write_file(path: str | os.PathLike, data: bytes, append: bool = False) -> None:
    """Write (or append) `data` and fsync it before returning."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace `path` with `data`: after any crash it holds the old or the new content."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write_file(tmp, data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def move_aside(paths: list[Path], out: Path, label: str, copies: tuple | list = ()) -> Path:
    """Move `paths` (files or folders inside `out`) to out/superseded/<label>-<time>/, keeping
    their relative layout, after copying `copies` there: what a new timeline replaces is kept,
    never deleted silently. Copies first, so a crash in between loses nothing either."""
    dest = out / "superseded" / f"{label}-{time.strftime('%Y%m%dT%H%M%S')}"
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
    dest.mkdir(parents=True)
    for p in copies:
        if Path(p).is_file():
            write_file(dest / Path(p).relative_to(out), Path(p).read_bytes())
    for p in paths:
        target = dest / p.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, target)
    fsync_dir(dest)
    fsync_dir(p.parent if paths else out)
    return dest


# Data-only globals outside torch's weights_only list: numpy RNG states (verl's extra_state).
DATA_GLOBALS = frozenset({"numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
                          "numpy._core.multiarray._reconstruct", "numpy.dtypes.UInt32DType",
                          "numpy.dtypes.Float64DType", "numpy.dtypes.Int64DType"})


def check_torch_file(path: str | os.PathLike) -> None:
    """Refuse a torch file whose pickle names anything but data (it could run code when loaded)."""
    import torch

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a torch zip file: a raw pickle can run code when loaded, "
                              "so it is not loaded")
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:  # a damaged zip or pickle: the cause is what the user needs
        raise CheckpointError(f"{path} is corrupt: {type(exc).__name__}: {exc}") from exc
    unsafe = sorted(set(found) - DATA_GLOBALS)
    if unsafe:
        raise CheckpointError(f"{path} would call {unsafe[:5]} when loaded: a checkpoint holds only tensors "
                              "and plain data, so this file was crafted or comes from another program; not loaded")


def read_jsonl_objects(path: str | os.PathLike, what: str = "record"):
    """Yield (line number, object) for each non-blank line of a JSON Lines file a user wrote; a line
    that is not a JSON object ends the read with a ConfigError naming the file and line."""
    import json

    from erl.core.config import ConfigError

    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{where}: a {what} must be a JSON object, got {type(obj).__name__}")
            yield lineno, obj
