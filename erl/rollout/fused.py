"""Fewer kernels a forward for the engine's own rollout copy: q/k/v and gate/up as one matmul each.

On a GPU a small model's decode step is bound by its kernel count, not its arithmetic: SmolLM2's
forward is ~1,140 kernels, whose GPU time outside attention (~3.4 ms at 384 rows) hardly shrinks
with fewer rows, and whose launches are the host's cost of every eager prefill (~36 ms) and of
every graph replay (docs/gpu/host_split). ERL decodes 176 steps a collect against RLVR's 64, so a
step's fixed cost is where ERL pays most. Here each layer's q, k and v weights become views into
one [q; k; v] tensor, and gate and up into one [gate; up] tensor, so one matmul computes them all
(erl.rollout.kv.SlotModel reads the fused tensor). The modules keep their weights (views), so
in-place writes (erl.rollout.merged.MergedLoRA.refresh) reach the fused tensor. Only for a copy
the engine owns: the trained model's parameters are never rebound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Fused:
    """One matmul for several linear layers that read the same input: `weight` [sum(sizes), in]
    (the layers' weights are views into it), `bias` (or None), `sizes` their output widths."""
    weight: torch.Tensor
    bias: torch.Tensor | None
    sizes: tuple[int, ...]


def _fuse(linears: list[torch.nn.Linear]) -> Fused | None:
    weights = [m.weight for m in linears]
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
        return None
    biases = [m.bias for m in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return None  # some with bias, some without: leave them
    weight = torch.cat([w.detach() for w in weights])
    bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    at = 0
    for m, w in zip(linears, weights):
        m.weight = torch.nn.Parameter(weight[at:at + w.shape[0]], requires_grad=False)
        if bias is not None:
            m.bias = torch.nn.Parameter(bias[at:at + w.shape[0]], requires_grad=False)
        at += w.shape[0]
    return Fused(weight, bias, tuple(w.shape[0] for w in weights))


def fuse_projections(model: Any) -> int:
    """Fuse q/k/v (`self_attn.erl_qkv`) and gate/up (`mlp.erl_gate_up`) of every decoder layer of a
    Llama-family model the caller owns (its parameters are rebound as views). Returns how many
    fused groups were made; layers of another shape are left as they are."""
    made = 0
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        names = ("q_proj", "k_proj", "v_proj")
        if all(isinstance(getattr(attn, n, None), torch.nn.Linear) for n in names):
            attn.erl_qkv = _fuse([getattr(attn, n) for n in names])
            made += attn.erl_qkv is not None
        names = ("gate_proj", "up_proj")
        if all(isinstance(getattr(mlp, n, None), torch.nn.Linear) for n in names) and hasattr(mlp, "act_fn"):
            mlp.erl_gate_up = _fuse([getattr(mlp, n) for n in names])
            made += mlp.erl_gate_up is not None
    return made
