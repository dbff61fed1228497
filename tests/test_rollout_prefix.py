"""PrefixScan (erl/rollout/prefix.py) returns common_prefix's lengths, only cheaper: checked
against a token-by-token count on slots that share a system prompt, hold nothing, or part
from the prompt inside it."""

import numpy as np
import pytest

from erl.rollout.prefix import PrefixScan, common_prefix


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
    assert (len(scan.head) >= 40) == (seed % 2 == 0)  # the shared system prompt is compared once
    prompts = [tasks[k] + rng.integers(0, 5, 20).tolist() for k in range(4)]
    prompts += [tok[slots[0], :held[slots[0]]].tolist() + [1, 2], system[:30], [7] + system, prompts[0]]
    for prompt in prompts:
        want = [by_hand(tok[s, :held[s]], prompt) for s in slots]
        assert scan.lengths(prompt).tolist() == want
        assert common_prefix(tok, prompt, len(prompt) - 1, among=slots).tolist() == want
    assert len(scan.memo) == len(prompts) - 1  # the repeated prompt was scanned once


def test_a_scan_over_empty_slots_matches_nothing():
    tok = np.full((4, 16), -1, dtype=np.int64)
    scan = PrefixScan(tok, [0] * 4, np.arange(4))
    assert scan.lengths([1, 2, 3]).tolist() == [0, 0, 0, 0] and scan.head == []
    assert PrefixScan(tok, [0] * 4, np.arange(0)).lengths([1, 2]).tolist() == []
