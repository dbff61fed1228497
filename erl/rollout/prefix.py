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


def prefix_lengths(rows: np.ndarray, prompts: list[list[int]], among: np.ndarray | None = None,
                   starts: list[int] | None = None) -> np.ndarray:
    """[len(prompts), rows] (or rows listed in `among`): how many of each prompt's tokens each row
    of token ids (padded with negatives) starts with. `starts`: each prompt is known to match every
    row in its first starts[i] tokens, so comparing begins there. All prompts at once, over the
    (prompt, row) pairs that still match: the first compared column of a thousand slots is sorted
    once and each prompt finds the rows with its token by binary search (most rows part from a
    prompt there: another task's grid), then the surviving pairs go on in growing column blocks.
    One comparison per prompt and row, per admitted sequence, had cost the GPU collect ~1.3 s
    (docs/gpu/host_planning)."""
    among = np.arange(rows.shape[0]) if among is None else np.asarray(among, dtype=np.int64)
    width = rows.shape[1]
    lens = np.asarray([min(len(p), width) for p in prompts], dtype=np.int64)
    # a prompt's columns past its length (and one sentinel past the rows' width) never match a row
    q = np.full((len(prompts), width + 1), -2, dtype=rows.dtype)
    for i, (p, k) in enumerate(zip(prompts, lens)):
        q[i, :k] = p[:k]
    start = np.minimum(np.zeros(len(prompts), np.int64) if starts is None else np.asarray(starts, np.int64), lens)
    out = np.repeat(start[:, None], len(among), axis=1)
    if not len(among) or not len(prompts):
        return out
    pis, sis = [], []
    for col in sorted(set(start.tolist())):  # the rows that share the prompt's token at its first compared column
        ps = np.nonzero(start == col)[0]
        keys = rows[among, min(col, width - 1)] if col < width else np.full(len(among), -1, rows.dtype)
        order = np.argsort(keys, kind="stable")
        lo = np.searchsorted(keys[order], q[ps, col], "left")
        hi = np.searchsorted(keys[order], q[ps, col], "right")
        counts = hi - lo
        pis.append(np.repeat(ps, counts))
        sis.append(order[np.repeat(lo, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)])
    pi, si = np.concatenate(pis), np.concatenate(sis)
    pos, block = start[pi] + 1, 1
    while pi.size:
        cols = pos[:, None] + np.arange(block)
        same = rows[among[si][:, None], np.minimum(cols, width - 1)] == q[pi[:, None], np.minimum(cols, width)]
        full = same.all(axis=1)
        part = ~full
        out[pi[part], si[part]] = pos[part] + same[part].argmin(axis=1)
        pi, si, pos, block = pi[full], si[full], pos[full] + block, block * 2
    return out


def common_prefix(rows: np.ndarray, prompt: list[int], n: int, among: np.ndarray | None = None,
                  start: int = 0) -> np.ndarray:
    """For each row (or each row listed in `among`), how many of the first n prompt tokens it
    starts with (prefix_lengths for one prompt)."""
    return prefix_lengths(rows, [list(prompt[:n])], among, [start])[0]


def pick_slot(lengths: np.ndarray, used: np.ndarray, taken: np.ndarray) -> int:
    """The untaken slot with the longest prefix, least recently used among equals (slot clocks
    stay below 2**32), lowest index among those: one argmax over a combined key, a tenth of a
    lexsort's cost at a thousand slots."""
    return int(np.where(taken, np.iinfo(np.int64).min, (lengths.astype(np.int64) << 32) - used).argmax())


def shared_head(rows: np.ndarray, n: int) -> tuple[int, ...]:
    """The tokens that every row (at least n long) starts with."""
    block = rows[:, :n]
    differs = (block != block[0]).any(axis=0)
    return tuple(block[0, :int(differs.argmax()) if differs.any() else block.shape[1]].tolist())


class PrefixScan:
    """Prefix lengths of prompts against fixed slots, for one admission. A slot that holds
    nothing matches nothing; the tokens that every holding slot starts with (the system prompt
    every ERL prompt shares) are compared with a prompt once, not once per slot; equal prompts
    (a task's n samples) scan once. The lengths are common_prefix's, only cheaper."""

    def __init__(self, tok: np.ndarray, held: list[int], slots: np.ndarray):
        self.tok, self.slots = tok, np.asarray(slots, dtype=np.int64)
        held_here = np.asarray(held, dtype=np.int64)[self.slots] if len(self.slots) else np.zeros(0, np.int64)
        self.live = np.nonzero(held_here > 0)[0]
        self.head = shared_head(tok[self.slots[self.live]], int(held_here[self.live].min())) if len(self.live) else ()
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
            k = len(self.head)
            starts = [k if tuple(p[:k]) == self.head else 0 for p in new]  # lists or tuples
            out[:, self.live] = prefix_lengths(self.tok, [p[:-1] for p in new], self.slots[self.live], starts)
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
        head = len(shared_head(prompts, min(map(len, unique))))  # the system prompt: compared once
        between = prefix_lengths(prompts, [list(k[:-1]) for k in wanting], starts=[head] * len(wanting))
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
