"""A LoRA-free copy of the policy for rollout: every adapted linear layer holds W + s·B·A.

A peft LoRA layer runs its base matmul plus two small ones (and a dropout and a scaling) on
every forward; with adapters on 7 modules of 8 blocks that is 112 extra ops per decode step,
~20% of a CPU eval (`python benchmarks/lora_merge.py`). The rollout engine decodes with this
copy instead. It is refreshed lazily: when the trained model's weights have changed (an
optimizer step, a loaded checkpoint) the next admission re-merges the adapters into it; the
delta is computed afresh from the current adapters each time, so nothing drifts.

Under autocast (the local trainer's bf16) the copy can hold its linear weights in autocast's
dtype (`dtype`): autocast casts each of them to it on every forward anyway, rounding as a copy
does, so the rollout's numbers do not change; what goes is ~210 cast kernels a forward of
SmolLM2 (a sixth of a decode step's launches) and their memory traffic.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from erl.rollout.fused import fuse_projections
from erl.rollout.versions import WeightsVersion


class MergedLoRA:
    """`model`: the plain copy; `refresh()`: re-merge when the source changed (True if it did)."""

    def __init__(self, source: Any, pairs: list[tuple[Any, Any]], model: Any, fused: int = 0):
        self.source, self.pairs, self.model = source, pairs, model
        self.fused = fused  # fused groups (q/k/v, gate/up) in the copy (erl.rollout.fused), for the log
        self._source_version = WeightsVersion(source)
        self.version = self._source_version()

    @classmethod
    def of(cls, model: Any, dtype: torch.dtype | None = None) -> MergedLoRA | None:
        """The merged copy of a peft LoRA model whose only trainable weights are its adapters;
        None for anything else (a plain model, other trainable weights: those would need syncing too).
        `dtype`: the autocast dtype every rollout of the copy runs under (its linear weights are
        stored in it: cast_linears)."""
        if not callable(getattr(model, "merge_and_unload", None)):
            return None
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        if not trained or any(".lora_A." not in n and ".lora_B." not in n for n in trained):
            return None
        plain = copy.deepcopy(model).merge_and_unload().eval()  # the copy: the trained model keeps its adapters
        for p in plain.parameters():
            p.requires_grad_(False)
        if dtype is not None:
            cast_linears(plain, dtype)
        # a GPU forward costs its kernels; a CPU one its arithmetic
        fused = fuse_projections(plain) if next(plain.parameters()).is_cuda else 0
        modules = dict(plain.named_modules())
        pairs = []
        for name, module in model.named_modules():
            if callable(getattr(module, "get_delta_weight", None)) and hasattr(module, "base_layer"):
                pairs.append((module, modules[name.removeprefix("base_model.model.")]))
        if not pairs:
            return None
        return cls(model, pairs, plain, fused)

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


def cast_linears(model: Any, dtype: torch.dtype) -> None:
    """The decoder layers' linear weights and the lm_head in `dtype` (untied from the embedding,
    which autocast leaves in its own dtype and so stays). Only for a model run under autocast
    of `dtype`: without it a linear would meet inputs of another dtype (the engine refuses)."""
    head = model.lm_head
    if head.weight is model.model.embed_tokens.weight:
        head.weight = torch.nn.Parameter(head.weight.detach().to(dtype), requires_grad=False)
    head.to(dtype)
    for layer in model.model.layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(dtype)
