"""What a run tells its user while it works: one line per phase (model fetch, eval, each step)
on the console and in the run's `train.log`, and task bars for the long phases.

Every message goes through the `erl` logger. The console handler writes through tqdm so that a
line never tears a progress bar; the run log is opened only once the run's checks have passed
(nothing is written into an output folder that might hold another run), so lines from before
that (model fetch, loading) are kept in memory and written first when it opens.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("erl")
LINE_FORMAT = "%(asctime)s %(message)s"
TIME_FORMAT = "%H:%M:%S"


class _TqdmConsole(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never end a run
            self.handleError(record)


def console_logging() -> None:
    """Show the `erl` logger's INFO lines on stderr (the CLIs call this once; idempotent)."""
    if not any(isinstance(h, _TqdmConsole) for h in log.handlers):
        handler = _TqdmConsole()
        handler.setFormatter(logging.Formatter(LINE_FORMAT, TIME_FORMAT))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # Hydra gives the root logger a console handler too: one line, not two


class _Buffer(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RunLog:
    """Collects the `erl` logger's lines from its creation; `open(path)` writes them to the
    file and appends every later line there, until `close()`."""

    def __init__(self) -> None:
        self._buffer: _Buffer | None = _Buffer()
        self._file: logging.FileHandler | None = None
        self._level = log.level
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)  # the file gets INFO lines even when the console is quiet
        log.addHandler(self._buffer)

    def open(self, path: Path) -> None:
        self._file = logging.FileHandler(path, encoding="utf-8")
        self._file.setFormatter(logging.Formatter(LINE_FORMAT, "%Y-%m-%d %H:%M:%S"))
        if self._buffer is not None:
            for record in self._buffer.records:
                self._file.handle(record)
            log.removeHandler(self._buffer)
            self._buffer = None
        log.addHandler(self._file)

    def close(self) -> None:
        for handler in (self._buffer, self._file):
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
        self._buffer = self._file = None
        log.setLevel(self._level)


@contextlib.contextmanager
def run_log() -> Iterator[RunLog]:
    rl = RunLog()
    try:
        yield rl
    finally:
        rl.close()


def task_bar(total: int, desc: str, enabled: bool = True):
    """A bar over tasks that vanishes when done (the phase's summary line follows it)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="task", leave=False, disable=not enabled, file=sys.stderr)


async def gather_with_bar(coros: list, bar) -> list:
    """asyncio.gather that ticks `bar` as each coroutine finishes (in any order)."""
    import asyncio

    async def one(coro):
        result = await coro
        bar.update(1)
        return result

    return list(await asyncio.gather(*(one(c) for c in coros)))


# (metric, label, format) shown in the one-line step summary, when the step has them.
STEP_FIELDS = (("attempt1/success", "succ1", ".2f"), ("attempt2/success", "succ2", ".2f"),
               ("reflection/rate", "refl", ".2f"), ("memory/size", "mem", ".0f"),
               ("loss/pg_loss", "pg", ".3f"), ("loss/distill_nll", "nll", ".3f"),
               ("eval/success", "eval", ".2f"))


def _shown(metrics: dict, key: str) -> bool:
    v = metrics.get(key)
    return isinstance(v, (int, float)) and math.isfinite(v)


def step_summary(step: int, total: int, metrics: dict) -> str:
    """`step 3/6  84.2 s (rollout 61.0 + update 23.2)  succ1 0.25 ... eval 0.31`: only the
    metrics this step has (no placeholder for an eval that did not run)."""
    head = f"step {step}/{total}"
    if _shown(metrics, "time/step"):
        head += f"  {metrics['time/step']:.1f} s"
        if _shown(metrics, "time/rollout") and _shown(metrics, "time/update"):
            head += f" (rollout {metrics['time/rollout']:.1f} + update {metrics['time/update']:.1f})"
    parts = [f"{label} {metrics[key]:{fmt}}" for key, label, fmt in STEP_FIELDS if _shown(metrics, key)]
    return "  ".join([head, *parts])


def bar_postfix(metrics: dict) -> dict[str, str]:
    """The step bar's short postfix: the same fields, absent ones left out."""
    keep = ("attempt1/success", "attempt2/success", "eval/success")
    out = {label: f"{metrics[key]:{fmt}}" for key, label, fmt in STEP_FIELDS if key in keep and _shown(metrics, key)}
    if _shown(metrics, "time/step"):
        out["s/step"] = f"{metrics['time/step']:.1f}"
    return out
