"""How the engine lays out a forward pass: which rows, how padded, in which shape buckets.
Pure functions over token ids and slot numbers; the engine runs the forwards."""

from __future__ import annotations

import torch


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def row_bucket(n: int, most: int, least: int = 8) -> int:
    """Batch rows: the next power of two (at least `least`), at most `most`."""
    b = least
    while b < n:
        b *= 2
    return min(b, most)


def prefill_chunks(admitted: list, budget: int) -> list[list]:
    """(slot, reused tokens, prompt) items in chunks of at most `budget` padded tokens, sorted
    by the length left to prefill so that a chunk pads little."""
    chunks: list[list] = []
    chunk: list = []
    for item in sorted(admitted, key=lambda a: len(a[2]) - a[1]):
        width = round_up(len(item[2]) - item[1], 16)  # sorted: the longest of the chunk so far
        if chunk and width * (len(chunk) + 1) > budget:
            chunks.append(chunk)
            chunk = []
        chunk.append(item)
    return chunks + [chunk] if chunk else chunks


def width_bucket(n: int, unit: int = 16) -> int:
    """The least of unit x 1, 1.5, 2, 3, 4, 6, 8, ... (a power of two or 1.5 times one) that holds
    n: at most a third of it padding. A prefill's CUDA graph is recorded per shape (tokens a row,
    keys), and ERL's prompts come in every length (first turns, observations, reflections,
    guided attempts)."""
    b, step = unit, 0
    while b < n:
        b = b * 3 // 2 if step % 2 == 0 else b * 4 // 3
        step += 1
    return b


def prefill_inputs(chunk: list, pad_id: int, cap: int, key_bucket: int, bucketed: bool = False) -> tuple:
    """The forward's (ids, pos, rows, write, keys, last) for a chunk of (slot, reused, prompt):
    each row prefills its prompt past the reused tokens, padded to a multiple of 16. `bucketed`:
    the shape of a replayed CUDA graph, rows padded to a power of two, width and keys to width_bucket;
    a padding row writes only the scratch column (cap - 1) of the chunk's first slot."""
    n = len(chunk)
    width = round_up(max(len(p) - u for _, u, p in chunk), 16)
    b = n
    if bucketed:
        b, width = row_bucket(n, 1 << 30, least=1), width_bucket(width)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    for i, (_, u, p) in enumerate(chunk):
        ids[i, :len(p) - u] = torch.tensor(p[u:])
    start = [u for _, u, _ in chunk] + [0] * (b - n)
    pos = torch.tensor(start)[:, None] + torch.arange(width)[None, :]
    write = pos.clamp(max=cap - 1)
    write[n:] = cap - 1
    longest = max(len(p) for _, _, p in chunk)
    keys = min(width_bucket(longest, key_bucket) if bucketed else round_up(longest, key_bucket), cap)
    rows = torch.tensor([s for s, _, _ in chunk] + [chunk[0][0]] * (b - n))
    last = torch.tensor([len(p) - u - 1 for _, u, p in chunk] + [0] * (b - n))
    return ids, pos, rows, write, keys, last


def decode_rows(slots: list[int], n_slots: int, span_ratio: float) -> tuple[list[int], bool]:
    """The rows of a decode step over the sorted active `slots`, and whether they are the first
    len(rows) slots in order (a view of the cache, no gather). The first `span` slots hold every
    active one: they run in place when that is at most span_ratio times the rows a gather would
    take (on a GPU the gathered copy costs twice what attention reads). Otherwise the active
    slots come first, padded with one idle slot to the row bucket."""
    b = row_bucket(len(slots), n_slots)
    span = row_bucket(slots[-1] + 1, n_slots)
    if span <= span_ratio * b:
        return list(range(span)), True
    active = set(slots)
    idle = next(s for s in range(n_slots) if s not in active)
    return slots + [idle] * (b - len(slots)), False
