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


def common_prefix(rows: np.ndarray, prompt: list[int], n: int, among: np.ndarray | None = None,
                  start: int = 0) -> np.ndarray:
    """For each row of token ids (padded with negatives), or each row listed in `among`, how
    many of the first n prompt tokens it starts with. Compared in growing column blocks, only
    the rows that match so far: most rows part from the prompt within its first tokens
    (another task's grid), and a thousand slots times a 600-token prompt, for each admitted
    sequence, would cost more than it saves. `start`: the rows are known to match the
    prompt's first `start` tokens (PrefixScan), so comparing begins there."""
    n = min(n, rows.shape[1])
    want = np.asarray(prompt[:n], dtype=rows.dtype)
    alive = np.arange(rows.shape[0]) if among is None else np.asarray(among, dtype=np.int64)
    lengths = np.zeros(rows.shape[0], dtype=np.int64)
    order = alive.copy()
    start, block = min(start, n), 32
    while alive.size and start < n:
        end = min(start + block, n)
        same = rows[alive, start:end] == want[None, start:end]
        full = same.all(axis=1)
        lengths[alive[~full]] = start + same[~full].argmin(axis=1)
        alive, start, block = alive[full], end, block * 2
    lengths[alive] = n
    return lengths[order]


def pick_slot(lengths: np.ndarray, used: np.ndarray, taken: np.ndarray) -> int:
    """The untaken slot with the longest prefix, least recently used among equals (slot clocks
    stay below 2**32), lowest index among those: one argmax over a combined key, a tenth of a
    lexsort's cost at a thousand slots."""
    return int(np.where(taken, np.iinfo(np.int64).min, (lengths.astype(np.int64) << 32) - used).argmax())


class PrefixScan:
    """Prefix lengths of prompts against fixed slots, for one admission. A slot that holds
    nothing matches nothing; the tokens that every holding slot starts with (the system prompt
    every ERL prompt shares) are compared with a prompt once, not once per slot; equal prompts
    (a task's n samples) scan once. The lengths are common_prefix's, only cheaper."""

    def __init__(self, tok: np.ndarray, held: list[int], slots: np.ndarray):
        self.tok, self.slots = tok, np.asarray(slots, dtype=np.int64)
        held_here = np.asarray(held, dtype=np.int64)[self.slots] if len(self.slots) else np.zeros(0, np.int64)
        self.live = np.nonzero(held_here > 0)[0]
        self.head: list[int] = []
        if len(self.live):
            block = tok[self.slots[self.live], :int(held_here[self.live].min())]
            differs = (block != block[0]).any(axis=0)
            self.head = block[0, :int(differs.argmax()) if differs.any() else block.shape[1]].tolist()
        self.memo: dict[tuple, np.ndarray] = {}

    def lengths(self, prompt: list[int]) -> np.ndarray:
        """Over `slots`, in order: how many of the prompt's tokens but its last each starts with."""
        key = tuple(prompt)
        if key not in self.memo:
            out = np.zeros(len(self.slots), dtype=np.int64)
            if len(self.live):
                k = len(self.head)
                start = k if prompt[:k] == self.head else 0
                out[self.live] = common_prefix(self.tok, prompt, len(prompt) - 1, among=self.slots[self.live],
                                               start=start)
            self.memo[key] = out
        return self.memo[key]


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
    counts = Counter(keys)
    seen: set[tuple] = set()
    mine = {slot for slot, _, _ in admitted}
    others = np.asarray([s for s in range(tok.shape[0]) if s not in mine and held[s] > 0], dtype=np.int64)
    width = max((len(p) for _, _, p in admitted), default=0)
    round_rows = np.full((len(admitted), width), -2, dtype=np.int64)  # first-wave prompts of this round
    round_slots: list[int] = []
    round_head = 0  # how many tokens every first-wave prompt starts with: comparisons start there
    plan = Plan([], [], [])
    # Equal prompts (a task's n samples) scan once: the held slots do not change during the plan
    # (PrefixScan), and a round lender that holds the whole prompt stays the first to do so.
    if scan is None:
        scan = PrefixScan(tok, held, np.arange(tok.shape[0]))
    at = np.full(tok.shape[0], -1, dtype=np.int64)  # the scan's columns of the lenders
    at[scan.slots] = np.arange(len(scan.slots))
    cols = at[others]
    assert (cols >= 0).all(), "plan_sharing: the scan must cover every slot that may lend"
    round_best: dict[tuple, tuple[int, int]] = {}
    alone: list[tuple[int, int]] = []  # (reuse, lender) of each sequence without this round's lenders
    for (slot, own, prompt), key in zip(admitted, keys):
        leads = counts[key] > 1 and key not in seen
        seen.add(key)
        n = len(prompt) - 1
        best, lender, second = own, -1, False
        if len(others) and best < n:  # a next turn whose own slot holds all but its last token: nothing longer
            lengths = scan.lengths(prompt)[cols]
            k = int(lengths.argmax())
            if lengths[k] > best:
                best, lender = int(lengths[k]), int(others[k])
        alone.append((best, lender))
        if round_slots and not leads and best + MIN_SAME_ROUND <= n:
            length, k = round_best.get(key, (-1, -1))
            if length < 0:
                first = round_rows[0, :round_head]
                start = round_head if len(prompt) >= round_head and (first == prompt[:round_head]).all() else 0
                lengths = common_prefix(round_rows[:len(round_slots)], prompt, n, start=start)
                i = int(lengths.argmax())
                length, k = int(lengths[i]), round_slots[i]
                if length == n:
                    round_best[key] = length, k
            if length >= best + MIN_SAME_ROUND:
                best, lender, second = length, k, True
        if not second:
            round_rows[len(round_slots), :len(prompt)] = prompt
            round_head = len(prompt) if not round_slots else \
                int(common_prefix(round_rows[:1], prompt, min(round_head, len(prompt)))[0])
            round_slots.append(slot)
        plan.reuse.append(best)
        plan.lender.append(lender)
        plan.second.append(second)
    if sum(r - a for r, (a, _), w in zip(plan.reuse, alone, plan.second) if w) < min_wave:
        plan.reuse, plan.lender = [a for a, _ in alone], [k for _, k in alone]
        plan.second = [False] * len(alone)
    return plan
