"""How the engine lays out a forward pass: which rows, how padded, in which shape buckets.
Pure functions over token ids and slot numbers; the engine runs the forwards."""

from __future__ import annotations

import numpy as np
import torch


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def row_bucket(n: int, most: int) -> int:
    """Decode batch rows: the next power of two (at least 8), at most `most`."""
    b = 8
    while b < n:
        b *= 2
    return min(b, most)


def prefill_chunks(admitted: list, budget: int, packed: bool = False) -> list[list]:
    """(slot, reused tokens, prompt) items in chunks of at most `budget` padded tokens, sorted
    by the length left to prefill so that a chunk pads little; `packed`: tokens end to end
    (packed_prefill_inputs), so a chunk holds `budget` new tokens."""
    chunks: list[list] = []
    chunk: list = []
    used = 0
    for item in sorted(admitted, key=lambda a: len(a[2]) - a[1]):
        new = len(item[2]) - item[1]
        # padded: the chunk's rows x its longest row so far (sorted), rounded to 16
        cost = used + new if packed else round_up(new, 16) * (len(chunk) + 1)
        if chunk and cost > budget:
            chunks.append(chunk)
            chunk, used = [], 0
        chunk.append(item)
        used += new
    return chunks + [chunk] if chunk else chunks


def prefill_inputs(chunk: list, pad_id: int, cap: int, key_bucket: int) -> tuple:
    """The forward's (ids, pos, rows, write, keys, last) for a chunk of (slot, reused, prompt):
    each row prefills its prompt past the reused tokens, padded to a multiple of 16. Filled in
    numpy: a tensor made from each row's list cost ~25 us, ~0.1 s of a GPU ERL collect."""
    width = round_up(max(len(p) - u for _, u, p in chunk), 16)
    ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
    for i, (_, u, p) in enumerate(chunk):
        ids[i, :len(p) - u] = p[u:]
    pos = torch.tensor([u for _, u, _ in chunk])[:, None] + torch.arange(width)[None, :]
    keys = min(round_up(max(len(p) for _, _, p in chunk), key_bucket), cap)
    rows = torch.tensor([s for s, _, _ in chunk])
    last = torch.tensor([len(p) - u - 1 for _, u, p in chunk])
    return torch.from_numpy(ids), pos, rows, pos.clamp(max=cap - 1), keys, last


def packed_prefill_inputs(chunk: list, cap: int, positions: int, groups: int) -> tuple:
    """The packed forward's (ids, pos, rows, write [1, N] but rows [N], keys, last, (cu_q, cu_k,
    lengths, longest)) for a chunk of (slot, reused, prompt): the rows' new tokens end to end,
    no padding (erl.rollout.kv.SlotModel._attend_packed). `positions`: the cache tensor's
    positions a slot (its flattened rows' stride); `groups`: query heads a KV head. Sequence
    (j, i), j < groups, holds row i's tokens at j x N + (their offset): one per (query head of a
    KV head, row), the same keys for every j."""
    news = [len(p) - u for _, u, p in chunk]
    starts = np.concatenate(([0], np.cumsum(news)))
    n = int(starts[-1])
    ids = np.concatenate([np.asarray(p[u:], dtype=np.int64) for _, u, p in chunk])
    pos = np.concatenate([np.arange(u, len(p), dtype=np.int64) for _, u, p in chunk])
    rows = np.repeat(np.asarray([s for s, _, _ in chunk], dtype=np.int64), news)
    lengths = np.asarray([len(p) for _, _, p in chunk], dtype=np.int64)
    cu_q = np.concatenate([starts[:-1] + j * n for j in range(groups)] + [[groups * n]])
    cu_k = np.concatenate([np.tile(np.asarray([s * positions for s, _, _ in chunk], dtype=np.int64), groups), [0]])
    pos_t = torch.from_numpy(pos)[None]
    packed = (torch.from_numpy(cu_q), torch.from_numpy(cu_k), torch.from_numpy(np.tile(lengths, groups)), max(news))
    return (torch.from_numpy(ids)[None], pos_t, torch.from_numpy(rows), pos_t.clamp(max=cap - 1), int(lengths.max()),
            torch.from_numpy(starts[1:] - 1), packed)


def decode_rows(slots: list[int], n_slots: int, span_ratio: float) -> tuple[list[int], bool]:
    """The rows of a decode step over the sorted active `slots`, and whether they are the first
    len(rows) slots in order (a view of the cache, no gather). The first `span` slots hold every
    active one: they run in place when that is at most span_ratio times the rows a gather would
    take (on a GPU the gathered copy costs twice what attention reads). Otherwise the active
    slots come first, padded with one idle slot to the row bucket. When every slot up to the
    last is active there is no idle one to pad with, and nothing to gather: a view whatever the
    ratio (varlen_decode's ratio 0 once the cache is full)."""
    b = row_bucket(len(slots), n_slots)
    span = row_bucket(slots[-1] + 1, n_slots)
    if span <= span_ratio * b or len(slots) == span:
        return list(range(span)), True
    active = set(slots)
    idle = next(s for s in range(n_slots) if s not in active)
    return slots + [idle] * (b - len(slots)), False
