"""Whether a model's weights were written since last asked: one number from its parameters'
in-place version counters (an optimizer step, a weight sync, a checkpoint load all write in place)."""

from __future__ import annotations

from typing import Any


class WeightsVersion:
    """Called: a number that changes whenever any parameter of `model` is written in place. The
    parameters are listed once: walking a LoRA-wrapped SmolLM2's ~1,000 modules for them took
    ~4 ms, twice an admission (docs/gpu/host_planning). A parameter replaced by a new tensor
    object, rather than written, goes unseen; nothing in the project replaces one."""

    def __init__(self, model: Any):
        self.params = list(model.parameters())

    def __call__(self) -> int:
        return sum(p._version for p in self.params)
