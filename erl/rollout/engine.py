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
(erl.rollout.graphs) or compiled graph is reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from erl.core.interfaces import Generation, SamplingParams
from erl.models.chat import ChatTokenizer
from erl.rollout.batching import settle
from erl.rollout.compiling import compiled, graph_count
from erl.rollout.device import to_device
from erl.rollout.graphs import DecodeGraphs
from erl.rollout.kv import SlotModel, unsupported_reason, unwrap
from erl.rollout.layout import (
    decode_rows,
    packed_prefill_inputs,
    prefill_chunks,
    prefill_inputs,
    round_up,
    row_bucket,
)
from erl.rollout.prefix import PrefixScan, pick_slot, plan_sharing
from erl.rollout.sampling import check_request, sample
from erl.rollout.versions import WeightsVersion

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    future: asyncio.Future | None = None
    out: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    result: Generation | None = None
    waited: int = 0  # decode steps spent in the queue


class _Sampled(NamedTuple):
    """One token per slot, on its way to the host (`done`: arrived; None on CPU), and on the device.
    `reqs`: the request each slot held when its token was drawn; a token reaches only that request,
    and only while it holds the slot (a pipelined step draws spare tokens for sequences that ended
    in the step before; a shrink or a failure empties the slots before the step in flight is
    delivered, and the restarted sequences are admitted after it)."""
    slots: list[int]
    tokens: torch.Tensor
    logps: torch.Tensor
    done: Any
    on_device: torch.Tensor
    reqs: list


class RolloutEngine:
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
    runs the episodes (a sequence that ended decodes one spare row, dropped)."""

    def __init__(self, model: Any, tokenizer: Any, slots: int = 64, max_len: int | None = None,
                 compile: bool | str = False, key_bucket: int = 128, prefill_budget: int | None = None,
                 stop_ids: list[int] | None = None, prefix_reuse: bool = True, refresh: Any = None,
                 eager_casts: bool = True, lend: bool = True, cuda_graphs: bool = True, overlap: bool | None = None,
                 pipeline: bool | None = None):
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
        self.active: dict[int, _Request] = {}
        self.waiting: deque[_Request] = deque()
        self._firsts: list[_Sampled] = []  # what a step's prefills sample: first tokens, delivered with its decode's
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

    @property
    def varlen_decode(self) -> bool:
        """Decode attention reads each row's own keys in place (erl.rollout.kv: the memory-efficient
        kernel's variable-length mode, CUDA), not dense rows up to the key bucket; rows are then
        the active slots, never a span with idle ones in it (nothing is gathered either way)."""
        return self.net.varlen

    @varlen_decode.setter
    def varlen_decode(self, on: bool) -> None:
        if self.active:
            raise RuntimeError("RolloutEngine.varlen_decode set with sequences decoding")
        self.net.varlen = bool(on)
        self.span_ratio = 0 if on else (2 if self.device.type == "cuda" else 1)
        self._packed_prefill = self.net.varlen and self.device.type == "cuda"

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
    def _request(self, prompt_ids: list[int], params: SamplingParams) -> _Request:
        return _Request(check_request(prompt_ids, params, self.max_len), params)

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

    def _cache_dtype(self) -> torch.dtype:
        kind = self.device.type
        if torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
        return self.net.inner.embed_tokens.weight.dtype

    def _ensure(self, slots: int, need: int) -> None:
        """Grow the cache to `slots` rows and > `need` positions (the last one is scratch)."""
        dtype = self._cache_dtype()
        cap = self.net.capacity
        same = bool(self.net.k) and self.net.k[0].dtype == dtype
        if same and slots <= self.n_slots and need < cap:
            return
        linear = self.net.layers[0].self_attn.q_proj.weight.dtype
        if not torch.is_autocast_enabled(self.device.type) and linear != dtype:  # merged.cast_linears
            raise RuntimeError(f"RolloutEngine: the model's linear weights are {linear} and its embedding {dtype}: "
                               f"run it under torch.autocast(dtype={linear})")
        if not same:  # a new precision: the held KV is of no use
            self.forget()
        slots = max(slots, self.n_slots)
        cap = min(max(round_up(need + 1, self.key_bucket), 2 * cap if need >= cap else cap),
                  round_up(self.max_len + 1, self.key_bucket))
        self.net.allocate(slots, cap, dtype, self.device)
        tok = np.full((slots, cap), -1, dtype=np.int64)
        tok[:self.tok.shape[0], :self.tok.shape[1]] = self.tok[:, :cap]
        self.tok = tok
        self.held += [0] * (slots - self.n_slots)
        self.used += [0] * (slots - self.n_slots)
        self.n_slots = slots

    def _match(self, prompt: list[int], scan: PrefixScan | None, free_at: np.ndarray, taken: np.ndarray,
               used: np.ndarray) -> tuple[int, int]:
        """(index among the admission's free slots, reused tokens): the untaken slot whose kept
        tokens share the longest prefix with the prompt, least recently used among equals. At
        least one token is prefilled."""
        lengths = scan.lengths(prompt)[free_at] if scan is not None else np.zeros(len(taken), dtype=np.int64)
        i = pick_slot(lengths, used, taken)
        return i, int(lengths[i])

    def _admit(self) -> None:
        if self.refresh is not None:
            self.refresh()
        version = self._weights_version()
        if version != self._version:  # held KV came from other weights: never reuse it
            self.forget()
            self._version = version
        free = [s for s in range(self.n_slots) if s not in self.active]
        want = min(len(self.waiting), self.max_slots - len(self.active))
        if len(free) < want:
            grow = row_bucket(len(self.active) + want, self.max_slots)
            self._ensure(grow, self.net.capacity - 1 if self.net.capacity else 0)
            free = [s for s in range(self.n_slots) if s not in self.active]
        admitted = []
        free_at = np.asarray(free, dtype=np.int64)
        taken = np.zeros(len(free), dtype=bool)
        used = np.asarray(self.used, dtype=np.int64)[free_at]
        # one scan of every slot serves the slot choice (free slots) and the lending plan (the rest)
        scan = PrefixScan(self.tok, self.held, np.arange(self.n_slots)) if self.prefix_reuse else None
        count = min(want, len(free))
        if scan is not None:
            scan.scan([r.prompt for r in itertools.islice(self.waiting, count)])
        for _ in range(count):
            req = self.waiting.popleft()
            i, reuse = self._match(req.prompt, scan, free_at, taken, used)
            taken[i] = True
            slot = int(free_at[i])
            self.active[slot] = req
            admitted.append((slot, reuse, req))
        self._ensure(self.n_slots, max(len(r.prompt) for _, _, r in admitted))
        if not (self.prefix_reuse and self.lend):
            self._prefill_all(admitted)
        else:  # KV lent by other slots; those lent by this round's sequences after their prefill
            plan = plan_sharing(self.tok, self.held, [(s, u, r.prompt) for s, u, r in admitted], self.min_wave, scan)
            waves: tuple[list, list] = ([], [])
            for (slot, _, req), reuse, lender, second in zip(admitted, plan.reuse, plan.lender, plan.second):
                waves[second].append((slot, reuse, req, lender))
            for wave in waves:
                lent = [(lender, slot, reuse) for slot, reuse, _, lender in wave if lender >= 0]
                if lent:
                    self.net.copy_prefix(*zip(*lent))
                    self.stats["shared_tokens"] += sum(n for _, _, n in lent)
                self._prefill_all([(slot, reuse, req) for slot, reuse, req, _ in wave])
        self.stats["batches"] += 1

    def _prefill_all(self, admitted: list) -> None:
        for chunk in prefill_chunks([(s, u, r.prompt) for s, u, r in admitted], self.prefill_budget,
                                    self.packed_prefill):
            self._prefill(chunk)

    def _prefill(self, chunk: list) -> None:
        """One forward over a chunk of (slot, reused tokens, prompt) admitted to their slots."""
        start = time.perf_counter()
        packed = None
        if self.packed_prefill:
            groups = self.net.heads // self.net.kv_heads
            *inputs, packed = packed_prefill_inputs(chunk, self.net.capacity, self.net.k[0].shape[2], groups)
            packed = (*(to_device(t, self.device, torch.int32) for t in packed[:3]), packed[3])
        else:
            inputs = prefill_inputs(chunk, self.pad_id, self.net.capacity, self.key_bucket)
        self.stats["prefill_padded_tokens"] += inputs[0].numel()
        with torch.profiler.record_function("engine.prefill"):  # the GPU time of prefills in a profile
            logits = self.net.forward(*(to_device(t, self.device) if torch.is_tensor(t) else t for t in inputs),
                                      **({"packed": packed} if packed is not None else {}))
        for s, u, prompt in chunk:
            self.tok[s] = -1
            self.tok[s, :len(prompt)] = prompt
            self.held[s] = len(prompt)
            self.stats["prefill_tokens"] += len(prompt) - u
            self.stats["reused_tokens"] += u
        # Not waited for: the step's decode reads these tokens on the device, and the host delivers
        # them with the decode's (finish), so it runs the episodes' code while the GPU prefills.
        self._firsts.append(self._sampled([s for s, _, _ in chunk], logits))
        self.stats["prefill_forwards"] += 1
        self.stats["prefill_seconds"] += time.perf_counter() - start

    def _decode_step(self, prev: tuple | None = None) -> _Sampled:
        start = time.perf_counter()
        slots = sorted(self.active)
        dev = self.device
        # Input tokens still on the device, by slot: those `prev` drew (pipelined: not yet delivered,
        # so this step writes one position further on) and those this step's prefills drew.
        sources = ([prev[1]] if prev is not None else []) + self._firsts
        where: dict[int, int] = {}  # slot -> index of its input token among the sources' tokens
        at = 0
        for sampled in sources:
            where.update((s, at + j) for j, (s, r) in enumerate(zip(sampled.slots, sampled.reqs))
                         if self.active.get(s) is r)
            at += len(sampled.slots)
        drawn_before = len(prev[1].slots) if prev is not None else 0
        ahead = {s for s, j in where.items() if j < drawn_before}
        need = max(self.held[s] + (s in ahead) for s in slots)  # the furthest position a slot writes now
        self._ensure(self.n_slots, need + 1)
        cap = self.net.capacity
        rows, full = decode_rows(slots, self.n_slots, self.span_ratio)
        b = len(rows)
        ids = [self.pad_id] * b
        pos = [cap - 1] * b  # idle rows write to the scratch column
        on_device: list[int] = []  # rows whose input token is among the sources'
        for i, s in enumerate(rows):
            req = self.active.get(s)
            if req is not None:
                pos[i] = min(self.held[s] + (s in ahead), cap - 1)  # a spare row may reach the scratch column
                if s in where:
                    on_device.append(i)
                else:
                    ids[i] = req.out[-1]
        keys = min(round_up(need + 1, self.key_bucket), cap)
        self._shapes.add((b, keys, cap))
        self.stats["decode_shapes"] = len(self._shapes)
        graphs = graph_count() if self.compile else 0  # eager decode builds no graphs: no lookup per step
        if self.compile:
            torch.compiler.cudagraph_mark_step_begin()
        # every input, the gather index too, goes up before the forward is queued: a pageable copy
        # after it would wait for the forward (to_device avoids the wait anyway)
        index = to_device(slots if full else list(range(len(slots))), dev)  # gathered: active slots come first
        pos_t = to_device(pos, dev)[:, None]
        ids_t = to_device(ids, dev)
        if on_device:  # moved from where they were drawn to here without the host
            drawn = torch.cat([sampled.on_device for sampled in sources])
            ids_t[to_device(on_device, dev)] = drawn[to_device([where[rows[i]] for i in on_device], dev)]
        args = (ids_t[:, None], pos_t, None if full else to_device(rows, dev), pos_t,
                keys, torch.zeros(len(rows), dtype=torch.long, device=dev))
        with torch.profiler.record_function("engine.decode"):  # the GPU time of decode steps in a profile
            if self.graphs is not None:
                recorded = self.graphs.captured
                logits = self.graphs(self.net.k[0], *args)
                self.stats["graphs_recorded"] += self.graphs.captured - recorded
            else:
                logits = self._decode(*args)
        if self.compile:
            self.stats["recompiles"] += graph_count() - graphs
        pending = self._sampled(slots, logits[index])
        self.stats["decode_steps"] += 1
        self.stats["decode_seconds"] += time.perf_counter() - start
        return pending

    # ---- sampling --------------------------------------------------------------------
    def _sampled(self, slots: list[int], logits: torch.Tensor) -> _Sampled:
        """One token per slot sampled from its logits [n, vocab], and its log-prob."""
        reqs = [self.active[s] for s in slots]
        tokens, logps = sample(logits, [r.params for r in reqs])
        if logits.device.type != "cuda":
            return _Sampled(slots, tokens, logps, None, tokens, reqs)
        done = torch.cuda.Event()  # copies into pinned memory: the host waits on this, not the stream
        on_host, logps = tokens.to("cpu", non_blocking=True), logps.to("cpu", non_blocking=True)
        done.record()
        return _Sampled(slots, on_host, logps, done, tokens, reqs)

    def _deliver(self, sampled: _Sampled, decoded: bool = False) -> None:
        """Append each slot's sampled token; finish the sequences that end. `decoded`: a decode
        step's tokens, whose forward wrote the KV of each slot's previous token. A sequence that
        ended on its first token (delivered just before) decoded one spare row: it is skipped."""
        if sampled.done is not None:
            start = time.perf_counter()
            sampled.done.synchronize()
            self.stats["gpu_wait_seconds"] += time.perf_counter() - start
        for s, drew, t, lp in zip(sampled.slots, sampled.reqs, sampled.tokens.tolist(), sampled.logps.tolist()):
            req = self.active.get(s)
            if req is not drew:  # ended (a spare row) or another's since
                continue
            if decoded:
                self.tok[s, self.held[s]] = req.out[-1]
                self.held[s] += 1
            req.out.append(t)
            req.logps.append(lp)
            room = len(req.prompt) + len(req.out) >= self.max_len
            if t in self._stops or len(req.out) >= req.params.max_new_tokens or room:
                self._finish(s, req, "stop" if t in self._stops else "length")

    def _finish(self, slot: int, req: _Request, reason: str) -> None:
        del self.active[slot]
        self.clock += 1
        self.used[slot] = self.clock
        text = self.tokenizer.decode(req.out, skip_special_tokens=True)
        req.result = Generation(token_ids=req.out, logprobs=req.logps, text=text, finish_reason=reason)
        self.stats["generated_tokens"] += len(req.out)
        self.stats["sequences"] += 1
        if req.future is not None and not req.future.done():
            req.future.set_result(req.result)
