"""Which KV a newly admitted sequence can take from another slot instead of prefilling it.

ERL's prompts repeat: the n samples of a task start from one prompt, and every reflection and
second attempt of a task repeats its system prompt and grid. A slot that holds those tokens'
KV (a running sequence, a finished one, or one admitted in the same round) can lend it: the
engine copies the KV rows and prefills only what differs. Pure numpy over token ids; the
engine does the copies and the forwards.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

# Borrowing from a sequence admitted in the same round costs one more prefill forward (it
# must wait for the lender's prefill), so it is worth it only for this many tokens or more.
MIN_SAME_ROUND = 16


def prefix_lengths(rows: np.ndarray, prompts: list[list[int]], among: np.ndarray | None = None) -> np.ndarray:
    """[len(prompts), rows] (or rows listed in `among`): how many of each prompt's tokens each row
    of token ids (left-aligned, padded with negatives) starts with. Exact, and without comparing
    each prompt with each row: the rows are sorted once by their bytes (memcmp order is a total
    order on tokens, so the sort is lexicographic over tokens), and in a sorted list a prompt's
    common prefix with a row is the least of its common prefix with the row at its insertion
    point and those of the adjacent rows in between. Comparing pairs instead cost the GPU collect
    1.3 s (column blocks per prompt) to 5.9 s (all pairs at once): ERL's rows share a system
    prompt and a task's samples share long histories (docs/gpu/host_planning)."""
    among = np.arange(rows.shape[0]) if among is None else np.asarray(among, dtype=np.int64)
    out = np.zeros((len(prompts), len(among)), dtype=np.int64)
    if not len(among) or not len(prompts):
        return out
    held = rows[among]
    filled = np.nonzero((held >= 0).any(axis=0))[0]
    width = int(filled[-1]) + 2 if len(filled) else 1  # a padding column ends every row
    # int32 (token ids < 2**31): half the bytes to sort by and compare as int64
    block = np.full((len(among), width), -1, dtype=np.int32)
    block[:, :width - 1] = held[:, :width - 1]
    q = np.full((len(prompts), width), -2, dtype=np.int32)  # never equal to a row's token or padding
    for i, p in enumerate(prompts):
        k = min(len(p), width - 1)
        q[i, :k] = p[:k]
    as_key = np.dtype((np.void, width * 4))
    order = np.argsort(block.view(as_key).ravel(), kind="stable")
    ranked = block[order]
    pos = np.searchsorted(ranked.view(as_key).ravel(), q.view(as_key).ravel())

    def common(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # the last column always differs
        return ((a == b) & (a >= 0)).argmin(axis=1)

    adjacent = common(ranked[:-1], ranked[1:])
    n = len(ranked)
    after = np.where(pos < n, common(ranked[np.minimum(pos, n - 1)], q), 0)
    before = np.where(pos > 0, common(ranked[np.maximum(pos - 1, 0)], q), 0)
    for i, (k, a, b) in enumerate(zip(pos.tolist(), after.tolist(), before.tolist())):
        out[i, order[k:]] = np.minimum.accumulate(np.concatenate(([a], adjacent[k:])))[:n - k]
        if k:
            out[i, order[:k][::-1]] = np.minimum.accumulate(np.concatenate(([b], adjacent[:k - 1][::-1])))
    return out


def pick_slot(lengths: np.ndarray, used: np.ndarray, taken: np.ndarray) -> int:
    """The untaken slot with the longest prefix, least recently used among equals (slot clocks
    stay below 2**32), lowest index among those: one argmax over a combined key, a tenth of a
    lexsort's cost at a thousand slots."""
    return int(np.where(taken, np.iinfo(np.int64).min, (lengths.astype(np.int64) << 32) - used).argmax())


class PrefixScan:
    """Prefix lengths of prompts against fixed slots, for one admission. A slot that holds
    nothing matches nothing; equal prompts (a task's n samples) scan once, and the prompts an
    admission names scan together (one sort of the slots)."""

    def __init__(self, tok: np.ndarray, held: list[int], slots: np.ndarray):
        self.tok, self.slots = tok, np.asarray(slots, dtype=np.int64)
        held_here = np.asarray(held, dtype=np.int64)[self.slots] if len(self.slots) else np.zeros(0, np.int64)
        self.live = np.nonzero(held_here > 0)[0]
        self.memo: dict[tuple, np.ndarray] = {}

    def lengths(self, prompt: list[int]) -> np.ndarray:
        """Over `slots`, in order: how many of the prompt's tokens but its last each starts with."""
        key = tuple(prompt)
        if key not in self.memo:
            self.scan([prompt])
        return self.memo[key]

    def scan(self, prompts: list[list[int]]) -> None:
        """The lengths of every prompt not yet scanned, in one prefix_lengths over them all (an
        admission scans its prompts before choosing their slots)."""
        new = list({tuple(p): p for p in prompts if tuple(p) not in self.memo}.values())
        if not new:
            return
        out = np.zeros((len(new), len(self.slots)), dtype=np.int64)
        if len(self.live):
            out[:, self.live] = prefix_lengths(self.tok, [p[:-1] for p in new], self.slots[self.live])
        for p, row in zip(new, out):
            self.memo[tuple(p)] = row


@dataclass
class Plan:
    """For each admitted sequence (in the order given): where its prompt's KV starts from."""
    reuse: list[int]   # tokens whose KV it will hold before its prefill
    lender: list[int]  # the slot that lends them (-1: its own slot's KV, nothing to copy)
    second: list[bool]  # True: lent by a sequence of this round, so prefilled after it


def plan_sharing(tok: np.ndarray, held: list[int], admitted: list[tuple[int, int, list[int]]],
                 min_wave: int = 0, scan: PrefixScan | None = None) -> Plan:
    """`tok` [slots, capacity]: the tokens whose KV each slot holds (-1 past `held`);
    `admitted`: (slot, tokens its own slot already holds, prompt) per sequence of this round.
    A lender from before the round is any slot not admitted now (so no copy overwrites
    another copy's source); a lender of this round is a sequence that is not itself waiting
    for one. The first of several equal prompts (a task's n samples) never waits: it lends
    its whole prompt to the others, where waiting for another task's sample would gain only
    the shared system prompt. At least the prompt's last token is always prefilled (its
    logits start the reply). `min_wave`: the second wave (the sequences that wait for a lender
    of this round) must save at least this many prefill tokens in all, or there is none and
    they prefill from their other sources in the first: on a GPU a forward costs about the same
    for a few thousand tokens as for one (erl.rollout.engine). `scan`: a PrefixScan covering
    every slot that may lend (the engine's, shared with its slot choice; default: one over every slot)."""
    keys = [tuple(p) for _, _, p in admitted]
    unique = {key: i for i, key in enumerate(dict.fromkeys(keys))}  # equal prompts (a task's n samples) plan once
    mine = {slot for slot, _, _ in admitted}
    others = np.asarray([s for s in range(tok.shape[0]) if s not in mine and held[s] > 0], dtype=np.int64)
    if scan is None:
        scan = PrefixScan(tok, held, np.arange(tok.shape[0]))
    scan.scan(list(unique))
    at = np.full(tok.shape[0], -1, dtype=np.int64)  # the scan's columns of the lenders
    at[scan.slots] = np.arange(len(scan.slots))
    cols = at[others]
    assert (cols >= 0).all(), "plan_sharing: the scan must cover every slot that may lend"
    # Lenders from before the round (the held slots do not change during the plan: PrefixScan).
    # A next turn whose own slot holds all but its last token finds nothing longer there.
    if len(others):
        lent = np.stack([scan.lengths(key) for key in unique])[:, cols]
        far, by = lent.max(axis=1), others[lent.argmax(axis=1)]
    alone: list[tuple[int, int]] = []  # (reuse, lender) of each sequence without this round's lenders
    for (_, own, prompt), key in zip(admitted, keys):
        u = unique[key]
        better = len(others) and own < len(prompt) - 1 and far[u] > own
        alone.append((int(far[u]), int(by[u])) if better else (own, -1))
    # Lenders of this round: prefix lengths between the round's prompts, only for those that may
    # gain MIN_SAME_ROUND tokens by one (most next turns hold their history in their own slot).
    wanting = list(dict.fromkeys(key for key, (best, _) in zip(keys, alone) if best + MIN_SAME_ROUND < len(key)))
    if wanting:
        width = max(map(len, unique))
        prompts = np.full((len(unique), width), -1, dtype=np.int64)
        for key, i in unique.items():
            prompts[i, :len(key)] = key
        between = prefix_lengths(prompts, [list(k[:-1]) for k in wanting])
        row_of = {key: i for i, key in enumerate(wanting)}
    counts = Counter(keys)
    seen: set[tuple] = set()
    round_slots: list[int] = []  # first-wave sequences of this round: the round's lenders
    round_prompts: list[int] = []  # ... and their prompts' columns of `between`
    plan = Plan([], [], [])
    for (slot, _, prompt), key, (best, lender) in zip(admitted, keys, alone):
        leads = counts[key] > 1 and key not in seen  # the first of equal prompts lends, never waits
        seen.add(key)
        second = False
        if round_slots and not leads and best + MIN_SAME_ROUND < len(prompt):
            lengths = between[row_of[key], round_prompts]
            i = int(lengths.argmax())
            if lengths[i] >= best + MIN_SAME_ROUND:
                best, lender, second = int(lengths[i]), round_slots[i], True
        if not second:
            round_slots.append(slot)
            round_prompts.append(unique[key])
        plan.reuse.append(best)
        plan.lender.append(lender)
        plan.second.append(second)
    if sum(r - a for r, (a, _), w in zip(plan.reuse, alone, plan.second) if w) < min_wave:
        plan.reuse, plan.lender = [a for a, _ in alone], [k for _, k in alone]
        plan.second = [False] * len(alone)
    return plan
