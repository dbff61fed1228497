"""A continuous-batching rollout engine behind the async Policy interface.

Requests wait in a queue; every engine step admits waiting requests into free slots (one
prefill of only the tokens whose KV the slot does not already hold), then decodes one token
for every active slot. A finished sequence frees its slot at once, so the batch never waits
for its longest row, and the slot keeps the sequence's KV: the next turn of the same attempt
(whose prompt extends it, token for token: erl.models.chat) prefills only its new tokens, and
a prompt that repeats another slot's tokens (n samples of a task, the task's system prompt
and grid in its reflection) copies their KV from that slot (erl.rollout.prefix).
The sampled token's log-prob comes from that step's logits (under logits / temperature, as
HFPolicy), so no full-vocabulary logits are kept. Shapes are bucketed (rows to powers of
two, key length to `key_bucket`; erl.rollout.layout) so that a decode step's CUDA graph
(erl.rollout.graphs) or compiled graph is reused. This module holds the queue, the loop and the
out-of-memory policy; what an admission does is erl.rollout.admission, what a decode step does
erl.rollout.decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from erl.core.interfaces import Generation, SamplingParams
from erl.models.chat import ChatTokenizer
from erl.rollout.admission import Admission
from erl.rollout.batching import settle
from erl.rollout.compiling import compiled
from erl.rollout.decoding import Decoding, Request, Sampled
from erl.rollout.flex import BLOCK as FLEX_BLOCK
from erl.rollout.graphs import DecodeGraphs
from erl.rollout.kv import SlotModel, unsupported_reason, unwrap
from erl.rollout.regions import compiled_regions
from erl.rollout.sampling import check_request
from erl.rollout.versions import WeightsVersion

logger = logging.getLogger(__name__)


class RolloutEngine(Admission, Decoding):
    """`slots`: most sequences decoded at once (the KV cache grows to it on demand);
    `max_len`: the context limit (prompt + generated); `compile`: torch.compile the decode
    step (CUDA only: off by default until measured there); `prefill_budget`: padded tokens
    per prefill forward; `stop_ids`: tokens that end a sequence (default: the chat template's
    end-of-turn and eos; [] generates exactly max_new_tokens); `eager_casts`: the compiled step
    rounds bf16/fp16 intermediates where eager PyTorch does (inductor's emulate_precision_casts),
    so its log-probs stay those of the trainer's eager forward; `prefix_reuse`: off, every
    request prefills its whole prompt (for measuring what reuse saves); `lend`: off, a slot reuses
    only the KV it holds itself, never another slot's (for measuring what lending saves);
    `refresh`: called before each admission to bring `model` up to date (erl.rollout.merged: a
    LoRA-merged copy); `cuda_graphs`: on CUDA without `compile`, replay each decode shape's eager
    forward as a CUDA graph (erl.rollout.graphs: the same log-probs, a fraction of the host time);
    `overlap` (default: on CUDA): while the GPU decodes a step, the episodes woken by the step
    before run their host code (templates, env steps), so their new requests join one step later;
    `pipeline` (default: with overlap): a decode step is queued before the step before it is
    delivered, its input tokens taken on the device, so the GPU decodes while the host delivers and
    runs the episodes (a sequence that ended decodes one spare row, dropped); `decode_attention`:
    "efficient" or "flex", the kernel of varlen decode attention; `regions`: see the properties."""

    def __init__(self, model: Any, tokenizer: Any, slots: int = 64, max_len: int | None = None,
                 compile: bool | str = False, key_bucket: int = 128, prefill_budget: int | None = None,
                 stop_ids: list[int] | None = None, prefix_reuse: bool = True, refresh: Any = None,
                 eager_casts: bool = True, lend: bool = True, cuda_graphs: bool = True, overlap: bool | None = None,
                 pipeline: bool | None = None, decode_attention: str = "efficient", regions: bool = False):
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"RolloutEngine cannot run this model: {reason}")
        if slots < 1:
            raise ValueError(f"RolloutEngine: slots must be >= 1, got {slots}")
        self.model, self.tokenizer, self.refresh = model, tokenizer, refresh
        self.net = SlotModel(model)
        self._weights_version = WeightsVersion(model)
        self.stop_ids = ChatTokenizer(tokenizer).stop_ids if stop_ids is None else list(stop_ids)
        self.prefix_reuse, self.lend = prefix_reuse, lend
        self._stops = set(self.stop_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.stop_ids or [0])[0]
        self.max_batch_size = self.max_slots = slots
        cfg = unwrap(model).config
        self.max_len = int(max_len or cfg.max_position_embeddings)
        self.device = next(model.parameters()).device
        # An admission (a prefill forward) waits for min(free slots, max(8, admit_ratio x decoding
        # sequences)) requests, or until the oldest has waited admit_wait decode steps. On a GPU a
        # small model's forward costs about the same for 8 rows as for 800 (host-bound): the ERL
        # collect at 64 x 8 made 106 admissions at ratio 0 and 21 at ratio 1, 13.9 -> 12.3 s
        # (docs/gpu/rollout_graphs/workload_graphs.txt); on CPU a forward costs by its rows.
        self.admit_ratio, self.admit_wait = (1.0 if self.device.type == "cuda" else 0.0), 8
        # On a CPU the forward runs in the host thread: nothing to overlap, and requests join sooner.
        self.overlap = self.device.type == "cuda" if overlap is None else bool(overlap)
        self.pipeline = self.overlap if pipeline is None else bool(pipeline)
        self.compile = bool(compile)
        self.key_bucket = key_bucket
        # a GPU prefill forward costs its ~1,200 launches whatever its size: fewer, larger ones
        self.prefill_budget = prefill_budget or (32768 if self.device.type == "cuda" else 2048)
        # ... and so a second prefill wave (sequences that copy KV from one prefilled in the same
        # admission) must save about a forward's worth of tokens (erl.rollout.prefix.plan_sharing)
        self.min_wave = self.prefill_budget if self.device.type == "cuda" else 0
        self.active: dict[int, Request] = {}
        self.waiting: deque[Request] = deque()
        self._firsts: list[Sampled] = []  # what a step's prefills sample: first tokens, delivered with its decode's
        self._worker: asyncio.Task | None = None
        try:
            self._decode = compiled(self.net.forward, compile, eager_casts) if self.compile else self.net.forward
        except ValueError as exc:
            raise ValueError(f"RolloutEngine: {exc}") from None
        self.graphs = (DecodeGraphs(self.net.forward) if cuda_graphs and not self.compile and self.device.type == "cuda"
                       else None)
        self.reset()  # no slots yet
        self._shapes: set[tuple] = set()
        self.stats = {"generated_tokens": 0, "generate_seconds": 0.0, "batches": 0, "sequences": 0,
                      "prefill_tokens": 0, "prefill_padded_tokens": 0, "reused_tokens": 0, "shared_tokens": 0, "decode_steps": 0,
                      "decode_shapes": 0, "recompiles": 0, "graphs_recorded": 0, "prefill_forwards": 0,
                      # wall time of queueing prefill / decode forwards with their sampling, and of the decode's
                      # delivery (_deliver: the wait for its and its prefills' tokens); the rest of
                      # generate_seconds is admission planning and bookkeeping
                      "prefill_seconds": 0.0, "decode_seconds": 0.0,
                      # of those, the host waiting for sampled tokens (the GPU still busy)
                      "gpu_wait_seconds": 0.0}
        # A decode step's attention at 384 rows of 1,024 slots: 14.6 ms of GPU dense, 7.1 ms varlen
        # (docs/gpu/host_planning/call8); once decode steps are pipelined the GPU's time is the step's.
        # The setter also sets span_ratio (erl.rollout.layout.decode_rows).
        self.varlen_decode = self.device.type == "cuda" and not self.compile
        self.decode_attention = decode_attention
        self.regions = regions

    @contextlib.contextmanager
    def _new_forward(self, setting: str):
        """A setting that changes the forward's layout or kernels: refused while a sequence decodes;
        after it the old forward's graphs are dropped, and with compiled parts (flex, regions) each
        new shape compiles in an eager run before its capture, never inside it."""
        if self.active:
            raise RuntimeError(f"RolloutEngine.{setting} set with sequences decoding")
        yield
        if self.graphs is not None:
            self.graphs.drop()
            self.graphs.warm = self.net.decode_attention == "flex" or self.net.regions is not None

    @property
    def varlen_decode(self) -> bool:
        """Decode attention reads each row's own keys in place (erl.rollout.kv: the memory-efficient
        kernel's variable-length mode, CUDA), not dense rows up to the key bucket; rows are then
        the active slots, never a span with idle ones in it (nothing is gathered either way)."""
        return self.net.varlen

    @varlen_decode.setter
    def varlen_decode(self, on: bool) -> None:
        with self._new_forward("varlen_decode"):
            if not on and self.net.decode_attention != "efficient":
                self.decode_attention = "efficient"  # flex reads the position-major cache of varlen
            self.net.varlen = bool(on)
            self.span_ratio = 0 if on else (2 if self.device.type == "cuda" else 1)
            self._packed_prefill = self.net.varlen and self.device.type == "cuda"

    @property
    def decode_attention(self) -> str:
        """Varlen decode attention's kernel: "efficient" (the memory-efficient kernel) or "flex"
        (FlexAttention's decoding kernel, erl.rollout.flex; if it fails: logged, then "efficient")."""
        return self.net.decode_attention

    @decode_attention.setter
    def decode_attention(self, kind: str) -> None:
        if kind not in ("efficient", "flex"):
            raise ValueError(f"RolloutEngine.decode_attention must be 'efficient' or 'flex', got {kind!r}")
        if kind == "flex" and not self.net.varlen:
            raise ValueError("RolloutEngine.decode_attention='flex' needs varlen_decode (on by default on CUDA, "
                             "without compile)")
        if kind == "flex" and self.key_bucket % FLEX_BLOCK:
            raise ValueError(f"RolloutEngine.decode_attention='flex' needs key_bucket to be a multiple of "
                             f"{FLEX_BLOCK}, got {self.key_bucket}")
        with self._new_forward("decode_attention"):
            self.net.decode_attention = kind

    @property
    def regions(self) -> bool:
        """Each fused layer's work around its attention as two torch.compile'd regions every layer
        shares (erl.rollout.regions). CUDA only, not with `compile`."""
        return self.net.regions is not None

    @regions.setter
    def regions(self, on: bool) -> None:
        if on and self.compile:
            raise ValueError("RolloutEngine.regions is not for a compiled engine: compile already compiles the decode step")
        if on and self.device.type != "cuda":
            raise ValueError("RolloutEngine.regions needs CUDA (torch.compile's GPU kernels)")
        with self._new_forward("regions"):
            self.net.regions = compiled_regions() if on else None

    @property
    def fused(self) -> bool:
        """Fused projections and norms where the model has them (erl.rollout.fused; SlotModel.fused);
        off only to measure what they save."""
        return self.net.fused

    @fused.setter
    def fused(self, on: bool) -> None:
        with self._new_forward("fused"):
            self.net.fused = bool(on)

    @property
    def packed_prefill(self) -> bool:
        """Prefills run the admitted rows' new tokens end to end, without padding, attention in the
        memory-efficient kernel's variable-length mode (CUDA, position-major cache: on with
        varlen_decode). As padded rows, an ERL collect's 29 prefills of 325k new tokens ran 1.1 s of
        GPU kernels, 39 ms a forward, most of them elementwise (docs/gpu/step_ratio/call2/profile.txt)."""
        return self._packed_prefill

    @packed_prefill.setter
    def packed_prefill(self, on: bool) -> None:
        if on and not (self.net.varlen and self.device.type == "cuda"):
            raise ValueError("RolloutEngine.packed_prefill needs CUDA and varlen_decode (a position-major cache)")
        self._packed_prefill = bool(on)

    def reset_stats(self) -> dict:
        old, self.stats = self.stats, {k: type(v)(0) for k, v in self.stats.items()}
        return old

    def reset(self) -> None:
        """Back to a new engine's state: no slots, no held KV, no slot history. Slot choice (and
        so which row of a decode step, and which random draw, a request gets) depends on that
        history, so a trainer resets before each phase: a step then samples the same tokens
        whether the process ran the earlier steps or resumed from their checkpoint. The cache's
        tensors stay allocated, and with them the CUDA graphs recorded against them: recording
        a phase's decode shapes again cost ~60 ms each (eager run + capture)."""
        if self.active or self.waiting:
            raise RuntimeError("RolloutEngine.reset with requests in flight")
        self._clear_slots()
        self.clock, self._version = 0, -1

    def _clear_slots(self, release: bool = False) -> None:
        """No slots in use; `release`: also free the cache's tensors and the graphs that read them."""
        if release:
            if self.graphs is not None:
                self.graphs.drop()
            self.net.release()
        else:
            self.net.clear()
        # Per slot: the tokens whose KV it holds (tok[s, :held[s]], -1 after) and when it
        # last finished (least recently used slots are reused first).
        self.tok = np.full((0, 0), -1, dtype=np.int64)
        self.held: list[int] = []
        self.used: list[int] = []
        self.n_slots = 0

    def forget(self) -> None:
        """Drop every slot's held KV (after a weight update it no longer matches the model)."""
        self.tok[:] = -1
        self.held = [0] * self.n_slots

    # ---- requests --------------------------------------------------------------------
    def _request(self, prompt_ids: list[int], params: SamplingParams) -> Request:
        return Request(check_request(prompt_ids, params, self.max_len), params)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        req = self._request(prompt_ids, params)
        loop = asyncio.get_running_loop()
        req.future = loop.create_future()
        self.waiting.append(req)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        return await req.future

    @contextlib.contextmanager
    def _eval_mode(self):
        """Eval mode for as long as requests flow, not per engine step: `Module.train()` walks
        every submodule (~16 ms for a LoRA-wrapped SmolLM2 on a CPU core), which at one toggle
        pair per decode step cost ~9% of a CPU rollout (cProfile of the default run's collect)."""
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            yield
        finally:
            if was_training:
                self.model.train()

    async def _run(self) -> None:
        try:
            with self._eval_mode():
                await self._loop()
        except Exception as exc:  # noqa: BLE001 -- every waiting episode sees the failure
            self._fail(exc)

    async def _loop(self) -> None:
        def queued() -> int:
            return len(self.waiting)

        prev = None  # pipelined: the step queued last, not yet delivered
        while self.waiting or self.active or prev is not None:
            if not self.active and prev is None:
                await settle(queued)
            if self.overlap and self.pipeline:
                pending = self.launch(prev)  # queued behind `prev` on the device, its inputs read from there
                self.finish(prev)
                await settle(queued)  # episodes run their host code while the GPU decodes
                prev = pending
            elif self.overlap:
                pending = self.launch()
                await settle(queued)  # episodes run their host code while the GPU prefills and decodes
                self.finish(pending)
            else:
                self.step()
                await settle(queued)  # episodes submit their next turns while others decode

    def _fail(self, exc: BaseException) -> None:
        """Fail every pending request and start clean (a half-written cache is not reused)."""
        for req in list(self.active.values()) + list(self.waiting):
            if req.future is not None and not req.future.done():
                req.future.set_exception(exc)
        self.active.clear()
        self.waiting.clear()
        self.forget()

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Blocking: all prompts through the engine (for callers without an event loop)."""
        reqs = [self._request(p, params) for p in prompts]
        self.waiting.extend(reqs)
        try:
            with self._eval_mode():
                while any(r.result is None for r in reqs):
                    self.step()
        except BaseException as exc:
            self._fail(exc)
            raise
        return [r.result for r in reqs]

    # ---- one engine step ---------------------------------------------------------------
    def step(self) -> None:
        """Admit waiting requests, decode one token for every active sequence, deliver them."""
        self.finish(self.launch())

    def launch(self, prev: tuple | None = None) -> tuple | None:
        """The step up to its decode forward and sampling, queued on the device and not waited
        for; `finish` takes the tokens. None: nothing to finish (no sequence decoding). `prev`: a
        launched step not yet finished, whose tokens this step's sequences take on the device."""
        start = time.perf_counter()
        try:
            return self._launch(prev)
        except torch.OutOfMemoryError as exc:
            if self._shrink(exc):
                return None
            # one slot does not fit: say what to change; _run / generate_batch fail the requests
            raise torch.OutOfMemoryError(
                f"RolloutEngine: out of GPU memory with a KV cache of {self.n_slots} slots x {self.net.capacity} "
                f"positions ({len(self.active)} sequences decoding, {len(self.waiting)} waiting); lower the "
                f"slots (trainer.gen_batch_size, now {self.max_slots}) or use rollout_engine=hf, whose batches "
                f"shrink when memory runs out ({exc})") from exc
        finally:
            self.stats["generate_seconds"] += time.perf_counter() - start

    def finish(self, pending: tuple | None) -> None:
        """Deliver a launched step: first tokens of the sequences it admitted, then its decode's."""
        if pending is None:
            return
        start = time.perf_counter()
        firsts, decoded = pending
        for sampled in firsts:
            self._deliver(sampled)
        self._deliver(decoded, decoded=True)
        spent = time.perf_counter() - start
        self.stats["decode_seconds"] += spent
        self.stats["generate_seconds"] += spent

    def _launch(self, prev: tuple | None) -> tuple | None:
        with self._eval_mode(), torch.no_grad():  # already in eval mode inside _run: no walk
            self._firsts = []
            free = self.max_slots - len(self.active)
            enough = min(free, max(8, int(self.admit_ratio * len(self.active))))
            if self.waiting and free and (not self.active or len(self.waiting) >= enough
                                          or self.waiting[0].waited >= self.admit_wait):
                self._admit()
            pending = (self._firsts, self._decode_step(prev)) if self.active else None
            for req in self.waiting:
                req.waited += 1
        return pending

    def _shrink(self, exc: BaseException) -> bool:
        """Out of GPU memory: halve the slots (as HFPolicy halves its batch), free the cache and
        decode the sequences in flight again from their prompts (tokens so far discarded: each
        result is one uninterrupted draw). False at one slot (the caller raises)."""
        if self.max_slots <= 1:
            return False
        again = [self.active[s] for s in sorted(self.active)]
        logger.warning("RolloutEngine: out of GPU memory with %d slots x %d positions; continuing with %d slots, "
                       "the %d sequences in flight restart from their prompts (%s)", self.n_slots,
                       self.net.capacity, self.max_slots // 2, len(again), str(exc).split("\n")[0])
        self.max_slots = self.max_batch_size = self.max_slots // 2
        for req in again:
            req.out, req.logps = [], []
        self.active.clear()
        self.waiting.extendleft(reversed(again))
        self._clear_slots(release=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return True

