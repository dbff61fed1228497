"""The Python heap during a step: what the garbage collector's full passes may walk, and how long
they took.

A full pass (generation 2) walks every container object the process holds: the model's modules,
the tokenizer, torch.compile's caches, the tasks, the memory. On a CPU with the tiny model that is
~0.4 million objects and 0.2 s a pass; with compiled kernels on a GPU it is more. The rollout
freezes what was alive before it (frozen_heap), so its passes walk only the episodes it made; the
step reports the seconds its full passes took (`perf/gc_full_seconds`), to tell a pass from other
causes when a step is slow (the ERL update's outliers on one H200: docs/gpu/workers_journal).
"""

from __future__ import annotations

import contextlib
import gc
import time


@contextlib.contextmanager
def frozen_heap():
    """The objects alive before a rollout (model, tasks, memory, earlier steps' records) stay out
    of the garbage collector's full passes during it (gc.freeze, as vLLM does after start-up): a
    rollout allocates fast enough to set off such passes, and each one walked every object the
    trainer holds. They rejoin the collector afterwards, so nothing is kept longer."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class FullPasses:
    """Counts the garbage collector's full passes in this process and the seconds they took, from
    `gc.callbacks` (any thread). `install()` registers the process's one counter and returns it."""

    _installed: FullPasses | None = None

    def __init__(self) -> None:
        self.passes = 0
        self.seconds = 0.0
        self._start: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.passes += 1
            self._start = None

    def totals(self) -> tuple[int, float]:
        return self.passes, self.seconds

    @classmethod
    def install(cls) -> FullPasses:
        if cls._installed is None:
            cls._installed = cls()
            gc.callbacks.append(cls._installed)
        return cls._installed
