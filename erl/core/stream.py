"""The order in which a trainer visits its training tasks: an endless stream of epochs,
epoch e being a permutation seeded by (seed, e). A resumed run needs only its cursor
(the position in the stream) to continue with exactly the same tasks."""

from __future__ import annotations

import numpy as np


def task_index(n_tasks: int, seed: int, position: int) -> int:
    """Index of the task at `position` of the stream over `n_tasks` tasks."""
    if n_tasks < 1:
        raise ValueError("task_index: no tasks")
    epoch, i = divmod(position, n_tasks)
    return int(np.random.default_rng([seed, epoch]).permutation(n_tasks)[i])


def next_tasks(tasks: list, seed: int, cursor: int, count: int) -> tuple[list, int]:
    """The `count` tasks from `cursor` on, and the cursor after them."""
    return [tasks[task_index(len(tasks), seed, cursor + k)] for k in range(count)], cursor + count


EVAL_SEED_OFFSET = 10**6  # evaluation after step k samples under step_seed(seed, EVAL_SEED_OFFSET + k)


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of `step` of a run seeded `seed`: what a step samples depends only on
    (seed, step), so a resumed run samples what the uninterrupted one did. The multiplier is a
    prime larger than any step count, so two (seed, step) pairs of a sweep never collide."""
    return seed * 1_000_003 + step
