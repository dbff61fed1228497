"""ERL's gates and segment rewards (ERL_SPEC section 1). Tiny on purpose: every trainer
and the workflow call these, so the rules live in exactly one place."""

from __future__ import annotations

import math
import numbers
from typing import Any

from erl.core.types import Segment


def is_reward(value: Any) -> bool:
    """A reward the gates can compare: a finite real number (numpy's too), not a bool. The one test
    of an env's step reward (erl.workflow.attempt) and of an agent's reward_fn (erl.agents.recorder)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def should_reflect(r1: float, tau: float) -> bool:
    """Reflect when the first attempt fell short of the gate (tau = 1: unless fully solved)."""
    return r1 < tau


def should_store(r2: float, threshold: float) -> bool:
    """A reflection enters memory when the second attempt it guided reached the threshold."""
    return r2 >= threshold


def should_distill(r2: float) -> bool:
    """Consolidate only second attempts that earned something: 1(r2 > 0)."""
    return r2 > 0


def segment_reward(segment: Segment, r1: float, r2: float | None) -> float:
    """The reward each training segment carries.

    attempt1 gets r1. The reflection, attempt 2 and its distilled copy get r2, so the
    reflection is credited with what it caused; a reflection with no second attempt
    (unparseable) has r2 = None and earns 0.
    """
    if segment == Segment.ATTEMPT1:
        return float(r1)
    if r2 is None:
        if segment == Segment.REFLECTION:
            return 0.0
        raise ValueError(f"segment {segment.value} needs r2, got None")
    return float(r2)
