"""A LoRA-free copy of the policy for rollout: every adapted linear layer holds W + s·B·A.

A peft LoRA layer runs its base matmul plus two small ones (and a dropout and a scaling) on
every forward; with adapters on 7 modules of 8 blocks that is 112 extra ops per decode step,
~20% of a CPU eval (`python benchmarks/lora_merge.py`). The rollout engine decodes with this
copy instead. It is refreshed lazily: when the trained model's weights have changed (an
optimizer step, a loaded checkpoint) the next admission re-merges the adapters into it; the
delta is computed afresh from the current adapters each time, so nothing drifts.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class MergedLoRA:
    """`model`: the plain copy; `refresh()`: re-merge when the source changed (True if it did)."""

    def __init__(self, source: Any, pairs: list[tuple[Any, Any]], model: Any):
        self.source, self.pairs, self.model = source, pairs, model
        self.version = self._source_version()

    @classmethod
    def of(cls, model: Any) -> MergedLoRA | None:
        """The merged copy of a peft LoRA model whose only trainable weights are its adapters;
        None for anything else (a plain model, other trainable weights: those would need syncing too)."""
        if not callable(getattr(model, "merge_and_unload", None)):
            return None
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        if not trained or any(".lora_A." not in n and ".lora_B." not in n for n in trained):
            return None
        plain = copy.deepcopy(model).merge_and_unload().eval()  # the copy: the trained model keeps its adapters
        for p in plain.parameters():
            p.requires_grad_(False)
        modules = dict(plain.named_modules())
        pairs = []
        for name, module in model.named_modules():
            if callable(getattr(module, "get_delta_weight", None)) and hasattr(module, "base_layer"):
                pairs.append((module, modules[name.removeprefix("base_model.model.")]))
        if not pairs:
            return None
        return cls(model, pairs, plain)

    def _source_version(self) -> int:
        """Changes whenever a weight of the trained model is written in place."""
        return sum(p._version for p in self.source.parameters())

    @torch.no_grad()
    def refresh(self) -> bool:
        version = self._source_version()
        if version == self.version:
            return False
        for lora, plain in self.pairs:
            weight = lora.base_layer.weight
            for name in lora.active_adapters:
                if name in lora.lora_A:
                    weight = weight + lora.get_delta_weight(name)
            plain.weight.copy_(weight)
        self.version = version
        return True
