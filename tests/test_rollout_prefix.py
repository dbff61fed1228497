"""PrefixScan (erl/rollout/prefix.py) returns prefix_lengths' lengths, memoised: checked
against a token-by-token count on slots that share a system prompt, hold nothing, or part
from the prompt inside it."""

import numpy as np
import pytest

from erl.rollout.prefix import PrefixScan, prefix_lengths


def by_hand(row: np.ndarray, prompt: list[int]) -> int:
    n = 0
    while n < len(prompt) - 1 and n < len(row) and row[n] == prompt[n]:
        n += 1
    return n


@pytest.mark.parametrize("seed", range(6))
def test_prefix_scan_counts_what_a_token_by_token_comparison_counts(seed):
    rng = np.random.default_rng(seed)
    system = rng.integers(0, 5, 40).tolist()  # a small vocabulary: long accidental matches too
    tasks = [system + rng.integers(0, 5, 30).tolist() for _ in range(4)]
    tok = np.full((24, 160), -1, dtype=np.int64)
    held = [0] * 24
    for s in range(24):
        kind = s % 4
        if kind == 3:
            continue  # holds nothing
        row = tasks[s % 4] + rng.integers(0, 5, int(rng.integers(0, 60))).tolist()
        if kind == 2 and seed % 2:
            row[int(rng.integers(0, 40))] = 7  # parts from the shared system prompt (no common head left)
        tok[s, :len(row)] = row
        held[s] = len(row)
    slots = rng.permutation(24)[:18]
    scan = PrefixScan(tok, held, slots)
    prompts = [tasks[k] + rng.integers(0, 5, 20).tolist() for k in range(4)]
    prompts += [tok[slots[0], :held[slots[0]]].tolist() + [1, 2], system[:30], [7] + system, prompts[0]]
    for prompt in prompts:
        want = [by_hand(tok[s, :held[s]], prompt) for s in slots]
        assert scan.lengths(prompt).tolist() == want
        assert prefix_lengths(tok, [prompt[:-1]], among=slots)[0].tolist() == want
    assert len(scan.memo) == len(prompts) - 1  # the repeated prompt was scanned once


def test_a_scan_over_empty_slots_matches_nothing():
    tok = np.full((4, 16), -1, dtype=np.int64)
    scan = PrefixScan(tok, [0] * 4, np.arange(4))
    assert scan.lengths([1, 2, 3]).tolist() == [0, 0, 0, 0]
    assert PrefixScan(tok, [0] * 4, np.arange(0)).lengths([1, 2]).tolist() == []


@pytest.mark.parametrize("seed", range(6))
def test_every_lent_prefix_is_held_by_its_lender_and_none_is_missed(seed):
    """plan_sharing on random prompts over a small vocabulary (long accidental matches too),
    with and without the engine's shared scan: a sequence copies only tokens its lender holds
    (a slot from before the round) or prefills first (a first-wave sequence of the round), as
    long as the best lender from before the round offers, and waits only to gain 16 more."""
    from erl.rollout.prefix import MIN_SAME_ROUND, plan_sharing

    rng = np.random.default_rng(seed)
    system = rng.integers(0, 4, 30).tolist()
    tasks = [system + rng.integers(0, 4, 25).tolist() for _ in range(3)]
    tok = np.full((40, 200), -1, dtype=np.int64)
    held = [0] * 40
    for s in range(0, 40, 2):  # every other slot holds an earlier sequence of some task
        row = tasks[s % 3] + rng.integers(0, 4, int(rng.integers(0, 80))).tolist()
        tok[s, :len(row)] = row
        held[s] = len(row)
    free = [s for s in range(40) if s % 4 in (1, 2)]  # admitted now: empty slots and holding ones
    admitted = []
    for s in free:
        prompt = tasks[int(rng.integers(0, 3))] + rng.integers(0, 4, int(rng.integers(1, 40))).tolist()
        if rng.random() < 0.3 and admitted:
            prompt = list(admitted[-1][2])  # a task's n samples: equal prompts
        admitted.append((s, 0, prompt))
    mine = {s for s, _, _ in admitted}
    for scan in (None, PrefixScan(tok, held, np.arange(40))):
        plan = plan_sharing(tok, held, admitted, scan=scan)
        first = {s: p for (s, _, p), w in zip(admitted, plan.second) if not w}
        for (slot, _, prompt), reuse, lender, second in zip(admitted, plan.reuse, plan.lender, plan.second):
            n = len(prompt) - 1
            alone = max([by_hand(tok[o, :held[o]], prompt) for o in range(40) if o not in mine and held[o]] + [0])
            assert reuse <= n
            if second:
                assert lender in first and first[lender][:reuse] == prompt[:reuse]
                assert reuse >= alone + MIN_SAME_ROUND
            else:
                assert reuse == alone
                if lender >= 0:
                    assert lender not in mine and tok[lender, :reuse].tolist() == prompt[:reuse]


def test_pick_slot_orders_as_a_lexsort_would():
    """Untaken first, then the longest prefix, then the least recently used, then the lowest
    index: the order np.lexsort((used, -lengths, taken)) gives, on random small values (many ties)."""
    from erl.rollout.prefix import pick_slot

    assert pick_slot(np.array([3, 5, 5, 5]), np.array([0, 9, 2, 2]), np.array([False, False, False, True])) == 2
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(1, 40))
        lengths, used = rng.integers(0, 4, n), rng.integers(0, 5, n)
        taken = rng.random(n) < 0.5
        taken[int(rng.integers(0, n))] = False
        assert pick_slot(lengths, used, taken) == int(np.lexsort((used, -lengths, taken))[0])


@pytest.mark.parametrize("seed", range(4))
def test_many_prompts_at_once_count_what_each_alone_counts(seed):
    """prefix_lengths over many prompts (lists or tuples, prompts past the rows' width, empty
    ones, rows with no padding column) and a scan of them all give each prompt's token-by-token counts."""
    rng = np.random.default_rng(seed)
    system = rng.integers(0, 3, 12).tolist()
    tok = np.full((30, 50), -1, dtype=np.int64)
    held = [0] * 30
    for s in range(30):
        if s % 5:
            row = (system + rng.integers(0, 3, int(rng.integers(0, 45))).tolist())[:50]
            tok[s, :len(row)] = row
            held[s] = len(row)
    prompts = [system + rng.integers(0, 3, int(rng.integers(0, 60))).tolist() for _ in range(25)]
    prompts += [[], system[:5], [9] + system, list(tok[1, :held[1]]) + [0]]
    among = np.nonzero(np.asarray(held) > 0)[0]
    got = prefix_lengths(tok, [tuple(p) for p in prompts], among)
    for p, row in zip(prompts, got):
        assert row.tolist() == [by_hand(tok[s, :held[s]], p + [0]) for s in among]
    scan = PrefixScan(tok, held, np.arange(30))
    scan.scan([tuple(p) for p in prompts if p] + [prompts[0]])  # a repeat, as a list, scans once
    assert len(scan.memo) == len({tuple(p) for p in prompts if p})
    for p in prompts[:-4]:
        assert scan.lengths(p).tolist() == [by_hand(tok[s, :held[s]], p) for s in range(30)]


def test_prefix_lengths_by_hand_at_both_ends_of_the_sorted_rows():
    """A prompt that sorts before every row, one after every row, and one between rows that
    share a prefix with it through their neighbours only (the minimum along the sorted rows)."""
    tok = np.full((4, 6), -1, dtype=np.int64)
    for s, row in enumerate([[1, 2, 3, 4], [1, 2, 5], [1, 7], [3, 3, 3, 3, 3]]):
        tok[s, :len(row)] = row
    got = prefix_lengths(tok, [[0, 1], [9], [1, 2, 4], [1, 2, 3, 4, 8], [3, 3, 3, 3, 3, 3, 3]])
    assert got.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 1, 0], [4, 2, 1, 0], [0, 0, 0, 5]]
    assert prefix_lengths(tok, [[1, 2]], among=[3, 1]).tolist() == [[0, 2]]
