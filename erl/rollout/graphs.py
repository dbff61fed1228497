"""CUDA graphs of the engine's eager decode step.

On a GPU a decode step of a small model is bound by the host, not the device: SmolLM2-135M's
forward is ~1,200 kernel launches, ~33 ms of Python and dispatch for ~4 ms of GPU work
(torch.profiler over the ERL workload's eval, docs/gpu/rollout_engine). A CUDA graph records
those launches once per shape and replays them with one call. Prefills are not recorded: their
shapes (rows, tokens, keys) rarely recur, and padded to recurring buckets they cost the GPU more
than they saved the host (docs/gpu/prefill_graphs). The graph is a recording of
the eager forward itself, so its log-probs are eager's to the bit, unlike torch.compile's fused
kernels (their bf16 intermediates drift by ~3e-2 nats).

A graph reads its inputs from, and writes its logits to, tensors it owns, and reads the weights
and the KV cache at the addresses they had when it was recorded: in-place weight updates
(optimizer steps, LoRA re-merges, checkpoint loads) are seen by the next replay, new cache
tensors (grown past their size, freed after running out of memory) drop every graph; a reset
keeps both (erl.rollout.kv.SlotModel.clear).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


@contextlib.contextmanager
def capture(graph: torch.cuda.CUDAGraph, pool: Any):
    """torch.cuda.graph without what its entry does first: torch.cuda.synchronize() and emptying
    the device and pinned-host caching allocators. At every new shape that made the host wait for
    the GPU's queue, and the copies and tensors after it allocate afresh: with prefills recorded
    too, an eager run and recording cost ~100 ms against ~55 ms for the eager run alone
    (docs/gpu/prefill_graphs/call2/workload_ab.txt). Captured on a side stream (the default
    stream cannot capture), as torch.cuda.graph does."""
    main = torch.cuda.current_stream()
    side = _side_stream(main.device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        graph.capture_begin(pool=pool)
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):  # the capture is void; the first error is the one to see
                graph.capture_end()
            raise
        graph.capture_end()
    main.wait_stream(side)


class DecodeGraphs:
    """`forward(ids, pos, rows, write, keys, last)` recorded the first time a shape (rows, key
    length, slots in place or gathered) is met, and replayed, that time too. Recording
    runs no kernel, so the replay writes the KV once. The first shape of a cache runs eagerly
    before its recording: libraries that initialise lazily (cuBLAS handles and workspaces) must
    not do so inside a capture. `warm`: every new shape does (a torch.compile'd forward compiles
    for a shape at its first call, which a capture cannot hold); the eager run writes the same KV
    at the same positions as the replays after it, so running it as well changes nothing."""

    def __init__(self, forward: Callable[..., torch.Tensor], warm: bool = False):
        self.forward, self.warm = forward, warm
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list, torch.Tensor]] = {}
        self.cache: Any = None  # the cache tensor the graphs were recorded against
        self.pool: Any = None
        self.enabled = True
        self.captured = 0  # graphs recorded in this process (the benchmark reports it)

    def drop(self) -> None:
        """Forget every graph (their memory goes back once nothing holds their outputs) and the
        cache they read: held, it could neither be freed nor have its address reused."""
        self.graphs.clear()
        self.pool = None
        self.cache = None

    def __call__(self, cache: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor | None,
                 write: torch.Tensor, keys: int, last: torch.Tensor) -> torch.Tensor:
        if cache is not self.cache:  # a new cache (grown, reset, shrunk after running out of memory)
            self.drop()
            self.cache = cache
        args = (ids, pos, rows, write, keys, last)
        key = (ids.shape[0], keys, rows is None)
        entry = self.graphs.get(key)
        if entry is not None:
            for dst, src in zip(entry[1], (ids, pos, rows, write, last)):
                if dst is not None:
                    dst.copy_(src)
        elif self.enabled:  # a new shape; the cache's first (and with `warm`, each) also runs eagerly
            first = self.warm or not self.graphs
            entry, out = self._record(key, args, run=first)
            if out is not None:  # this step's result: the recording ran no kernel
                return out
        if entry is None:
            return self.forward(*args)
        entry[0].replay()
        return entry[2]

    @staticmethod
    def _autocast(dev: str):
        # autocast's weight-cast cache would hand the recording a cast made before it (stale
        # after the next optimizer step): the recorded forward casts the weights itself
        return torch.autocast(dev, dtype=torch.get_autocast_dtype(dev), enabled=torch.is_autocast_enabled(dev),
                              cache_enabled=False)

    def _record(self, key: tuple, args: tuple, run: bool) -> tuple[tuple | None, torch.Tensor | None]:
        """(A graph of the forward on copies of `args`, its inputs from then on, or None; with `run`,
        the forward's output from an eager run on those copies before the capture, else None). The
        eager run takes the copies, not `args`: a compiled forward guards on its inputs' strides
        too, and the capture must find the code that run compiled; inside the capture nothing may
        compile (it would leave the CUDA generator mid-capture), so a recompile there is an error."""
        ids, pos, rows, write, keys, last = args
        inputs = [None if t is None else t.clone() for t in (ids, pos, rows, write, last)]
        call = (inputs[0], inputs[1], inputs[2], inputs[3], keys, inputs[4])
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        dev = ids.device.type
        with self._autocast(dev):
            out = self.forward(*call) if run else None
            try:
                frozen = torch.compiler.set_stance("fail_on_recompile") if self.warm else contextlib.nullcontext()
                with frozen, capture(graph, self.pool):
                    recorded = self.forward(*call)
            except torch.OutOfMemoryError:  # the engine's own remedy: fewer slots, a new cache, new graphs
                self.drop()
                raise
            except Exception as exc:  # noqa: BLE001 -- an unrecordable op: decode on eagerly, say so once
                logger.warning("RolloutEngine: CUDA graph recording failed (%s: %s); decoding eagerly from now on",
                               type(exc).__name__, str(exc).split("\n")[0])
                self.enabled = False
                self.drop()
                return None, out
        self.graphs[key] = entry = (graph, inputs, recorded)
        self.captured += 1
        return entry, out
