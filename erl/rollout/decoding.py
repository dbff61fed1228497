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

import numpy as np
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
        n = self.n_slots
        # Per slot, the index of its input token among the tokens still on the device (-1: on the
        # host, its request's last token): those `prev` drew (pipelined: not yet delivered, so this
        # step writes one position further on: `ahead`) and those this step's prefills drew. Only
        # a token drawn for the request that holds the slot now counts. numpy over the slots: this
        # runs every decode step, on the host's path, for ~400 rows in an ERL collect.
        sources = ([prev[1]] if prev is not None else []) + self._firsts
        src = np.full(n, -1, dtype=np.int64)
        ahead = np.zeros(n, dtype=np.int64)
        at = 0
        for k, sampled in enumerate(sources):
            live = [j for j, (s, r) in enumerate(zip(sampled.slots, sampled.reqs)) if self.active.get(s) is r]
            if live:
                idx = np.asarray(live, dtype=np.int64)
                mine = np.asarray(sampled.slots, dtype=np.int64)[idx]
                src[mine] = at + idx
                if prev is not None and k == 0:  # prev's own tokens, not the prefills'
                    ahead[mine] = 1
            at += len(sampled.slots)
        held = np.asarray(self.held, dtype=np.int64)
        act = np.asarray(slots, dtype=np.int64)
        need = int((held[act] + ahead[act]).max())  # the furthest position a slot writes now
        self._ensure(n, need + 1)
        cap = self.net.capacity
        rows, full = decode_rows(slots, n, self.span_ratio)
        r = np.asarray(rows, dtype=np.int64)
        b = len(r)
        busy = np.zeros(n, dtype=bool)
        busy[act] = True
        on = busy[r]  # rows of a decoding sequence (idle and padding rows write the scratch column)
        pos = np.full(b, cap - 1, dtype=np.int64)
        pos[on] = np.minimum(held[r[on]] + ahead[r[on]], cap - 1)  # a spare row may reach the scratch column
        ids = np.full(b, self.pad_id, dtype=np.int64)
        moved = np.nonzero(on & (src[r] >= 0))[0]  # rows whose input token is on the device
        hosted = np.nonzero(on & (src[r] < 0))[0]
        if len(hosted):
            ids[hosted] = [self.active[s].out[-1] for s in r[hosted].tolist()]
        keys = min(round_up(need + 1, self.key_bucket), cap)
        self._shapes.add((b, keys, cap))
        self.stats["decode_shapes"] = len(self._shapes)
        # Every input goes up in one copy, before the forward is queued (a pageable copy after it
        # would wait for the forward): the gather index (gathered: active slots come first), the
        # positions, the tokens, where the moved tokens go and come from, `last`, the rows.
        index = act if full else np.arange(len(act), dtype=np.int64)
        parts = [index, pos, ids, moved, src[r[moved]], np.zeros(b, dtype=np.int64)] + ([] if full else [r])
        flat = to_device(torch.from_numpy(np.concatenate(parts)), dev)
        index_t, pos_t, ids_t, to_rows, from_at, last, *rows_t = flat.split([len(p) for p in parts])
        if len(moved):  # moved from where they were drawn to here without the host
            drawn = torch.cat([sampled.on_device for sampled in sources])
            ids_t[to_rows] = drawn[from_at]
        pos_t = pos_t[:, None]
        args = (ids_t[:, None], pos_t, rows_t[0] if rows_t else None, pos_t, keys, last)
        graphs = graph_count() if self.compile else 0  # eager decode builds no graphs: no lookup per step
        if self.compile:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.profiler.record_function("engine.decode"):  # the GPU time of decode steps in a profile
            if self.graphs is not None:
                recorded = self.graphs.captured
                logits = self.graphs(self.net.k[0], *args)
                self.stats["graphs_recorded"] += self.graphs.captured - recorded
            else:
                logits = self._decode(*args)
        if self.compile:
            self.stats["recompiles"] += graph_count() - graphs
        pending = self._sampled(slots, logits[index_t])
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
        active, held, stops, max_len = self.active, self.held, self._stops, self.max_len
        wrote: list[tuple[int, int, int]] = []  # (slot, position, token): KV the decode wrote, noted below at once
        for s, drew, t, lp in zip(sampled.slots, sampled.reqs, sampled.tokens.tolist(), sampled.logps.tolist()):
            req = active.get(s)
            if req is not drew:  # ended (a spare row) or another's since
                continue
            out = req.out
            if decoded:
                wrote.append((s, held[s], out[-1]))
                held[s] += 1
            out.append(t)
            req.logps.append(lp)
            if t in stops or len(out) >= req.params.max_new_tokens or len(req.prompt) + len(out) >= max_len:
                self._finish(s, req, "stop" if t in stops else "length")
        if wrote:
            at = np.asarray(wrote, dtype=np.int64)
            self.tok[at[:, 0], at[:, 1]] = at[:, 2]

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
