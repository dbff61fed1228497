"""What a decode step does, for RolloutEngine: one token for every active slot (its inputs
taken on the device from the step before when pipelined, a CUDA graph replayed where one is
recorded), its sampling with the token's log-prob, and the delivery of tokens to their requests,
finishing the sequences that end. A mixin over the engine's state (erl.rollout.engine), with the
request and sampled-token records both halves share."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from erl.core.interfaces import Generation, SamplingParams
from erl.rollout.compiling import graph_count
from erl.rollout.device import to_device
from erl.rollout.layout import decode_rows, round_up
from erl.rollout.sampling import sample


@dataclass
class Request:
    """One generate call: its prompt and sampling, what it has drawn so far, its result."""
    prompt: list[int]
    params: SamplingParams
    future: asyncio.Future | None = None
    out: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    result: Generation | None = None
    waited: int = 0  # decode steps spent in the queue


class Sampled(NamedTuple):
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


class Decoding:
    """RolloutEngine's decode steps (the module's docstring says what they do)."""

    def _decode_step(self, prev: tuple | None = None) -> Sampled:
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
    def _sampled(self, slots: list[int], logits: torch.Tensor) -> Sampled:
        """One token per slot sampled from its logits [n, vocab], and its log-prob."""
        reqs = [self.active[s] for s in slots]
        tokens, logps = sample(logits, [r.params for r in reqs])
        if logits.device.type != "cuda":
            return Sampled(slots, tokens, logps, None, tokens, reqs)
        done = torch.cuda.Event()  # copies into pinned memory: the host waits on this, not the stream
        on_host, logps = tokens.to("cpu", non_blocking=True), logps.to("cpu", non_blocking=True)
        done.record()
        return Sampled(slots, on_host, logps, done, tokens, reqs)

    def _deliver(self, sampled: Sampled, decoded: bool = False) -> None:
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

    def _finish(self, slot: int, req: Request, reason: str) -> None:
        del self.active[slot]
        self.clock += 1
        self.used[slot] = self.clock
        text = self.tokenizer.decode(req.out, skip_special_tokens=True)
        req.result = Generation(token_ids=req.out, logprobs=req.logps, text=text, finish_reason=reason)
        self.stats["generated_tokens"] += len(req.out)
        self.stats["sequences"] += 1
        if req.future is not None and not req.future.done():
            req.future.set_result(req.result)
