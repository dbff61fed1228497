"""What an admission does, for RolloutEngine: grow the KV cache when the admitted need more,
choose each request's slot (the free one whose held tokens share the longest prefix with its
prompt), plan which KV other slots lend (erl.rollout.prefix), and run the prefill forwards that
sample each sequence's first token. A mixin over the engine's state (erl.rollout.engine: `net`,
`tok` / `held` / `used` per slot, `active`, `waiting`, `stats`, ...)."""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from erl.rollout.device import to_device
from erl.rollout.layout import packed_prefill_inputs, prefill_chunks, prefill_inputs, round_up, row_bucket
from erl.rollout.prefix import PrefixScan, pick_slot, plan_sharing


class Admission:
    """RolloutEngine's admissions (the module's docstring says what they do)."""

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
