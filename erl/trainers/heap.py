"""The Python heap during a step: what the garbage collector's full passes may walk, and how long
they took.

A full pass (generation 2) walks every container object the process holds: the model's modules,
the tokenizer, torch.compile's caches, the tasks, the memory. On a CPU with the tiny model that is
~0.4 million objects and 0.2 s a pass; with compiled kernels on a GPU it is more. The rollout
freezes what was alive before it (frozen_heap), so its passes walk only the episodes it made; the
step reports the seconds its full passes took (`perf/gc_full_seconds`), to tell a pass from other
causes when a step is slow (the ERL update's outliers on one H200: docs/gpu/workers_journal).

Outside the rollouts such a pass still walked everything: on one H200 with `preset=gpu`, one pass
inside an ERL update took 3.0 s of its 4.2 s (the other steps' updates: 1.0-1.4 s;
docs/gpu/verl_copy/c1/step.txt). A training loop therefore settles its heap after every step
(settled_heap): one collection of what is not frozen yet, then what survived is frozen, as vLLM
freezes its heap after start-up. The first settling walks everything once (the model, compiled
kernels and their caches, the tokenizer); every later pass, in a rollout or an update, walks only
what the steps made since the last. Frozen once after the first step only, the heap grew unfrozen
again and every step paid 0.2-0.5 s of passes (docs/gpu/verl_copy/c2). What was frozen and later
becomes cyclic garbage would stay until the loop ends; what dies by reference count (most things)
is freed as always. None formed in a measurement: after each of 20-30 local ERL steps (the tiny
model, the reflection memory full and evicting) a full collection of everything found nothing
unreachable, and the frozen count stopped growing after 16 steps (benchmarks/heap_retention.py,
docs/cpu_heap_retention_session29.txt).
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
    trainer holds. They rejoin the collector afterwards, so nothing is kept longer. A heap frozen
    already (a settled loop's: settled_heap) is not this rollout's to thaw, and stays so."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class SettledHeap:
    """A training loop's heap (the module's docstring says why): `settle()` after each step."""

    def __init__(self) -> None:
        self.settled = self.released = False

    def settle(self) -> dict[str, float]:
        """One collection of what is not frozen yet, then every survivor frozen until the loop ends.
        Returns its seconds and how many objects are frozen, as metrics ({} once released: a step
        run after its loop ended, by an error say, leaves the heap alone)."""
        if self.released:
            return {}
        start = time.perf_counter()
        gc.collect()
        gc.freeze()
        self.settled = True
        return {"perf/gc_settle_seconds": time.perf_counter() - start, "perf/gc_frozen_objects": float(gc.get_freeze_count())}

    def release(self) -> None:
        self.released = True
        if self.settled:
            gc.unfreeze()
            self.settled = False


@contextlib.contextmanager
def settled_heap(*loops):
    """A SettledHeap for the length of a training loop; the loop's end thaws what it froze. `loops`:
    the drivers whose steps settle it (erl.trainers.driver.ErlDriver.heap), given it for the loop's
    length and no longer after, an error's exit included."""
    heap = SettledHeap()
    for loop in loops:
        loop.heap = heap
    try:
        yield heap
    finally:
        heap.release()
        for loop in loops:
            loop.heap = None


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
