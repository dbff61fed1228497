"""Compiled regions of the engine's forward: a layer's work on either side of attention, fused by
torch.compile, while the cache writes and the attention kernel stay as they are.

A decode step of SmolLM2-135M is ~750 kernels, 25 a layer, and outside attention most are small
elementwise kernels whose launches, not their arithmetic, set the GPU's time (~3.7 of a 5.9 ms
step at ~380 rows inside the trainer, docs/gpu/step_split). A prefill's are the same kernels over
~13k tokens of float32 residual stream: 26 ms of GPU time and ~23 ms of the host's to queue them.
ERL makes 176 decode steps and 25 prefills a collect where RLVR makes 64 and 10, so these fixed
costs are where its step pays most. Compiling the whole forward was measured slower in the
trainer (docs/gpu/decode_kernels: dynamic-shape kernels over every row count); these regions are
two small functions that every layer shares, compiled once for decode shapes and once for
prefill shapes, whose graphs never hold the cache:
- `attention_inputs`: RMSNorm, cast, the fused q/k/v matmul, rotary embedding, casts;
- `mlp_block`: o_proj and the residual add, RMSNorm, cast, the fused gate/up matmul, SiLU x up,
  down_proj and the residual add.
Both are the eager forward's formulas (erl.rollout.kv.SlotModel: _norm, rope, _mlp), with
inductor's emulate_precision_casts so that intermediates round where eager's do.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F


class LayerWeights(NamedTuple):
    """What the two regions read of one decoder layer."""
    in_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    qkv_sizes: tuple
    o: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    gate_up_sizes: tuple
    down: torch.Tensor
    down_bias: torch.Tensor | None
    eps: float


def rms_params(norm: Any) -> tuple[torch.Tensor, float] | None:
    """(weight, epsilon) of an RMSNorm with a float32 weight, whose formula F.rms_norm computes in
    float32 as the module does (up to the order of the sum of squares); None for any other norm."""
    weight, eps = getattr(norm, "weight", None), getattr(norm, "variance_epsilon", None)
    if weight is None or eps is None or weight.dtype != torch.float32 or not type(norm).__name__.endswith("RMSNorm"):
        return None
    return weight, float(eps)


def layer_weights(layer: Any) -> LayerWeights | None:
    """The layer's weights for the regions, or None where the layer is not the shape they compute
    (then the eager forward runs it): fused projections (erl.rollout.fused), float32 RMSNorms of one
    epsilon, plain linear o/down projections (a LoRA-merged copy: no adapters left), SiLU, no
    q/k norms (Qwen3)."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv, gate_up = getattr(attn, "erl_qkv", None), getattr(mlp, "erl_gate_up", None)
    norms = rms_params(layer.input_layernorm), rms_params(layer.post_attention_layernorm)
    if (qkv is None or gate_up is None or None in norms or norms[0][1] != norms[1][1] or hasattr(attn, "q_norm")
            or type(attn.o_proj) is not torch.nn.Linear or type(mlp.down_proj) is not torch.nn.Linear
            or type(getattr(mlp, "act_fn", None)).__name__ not in ("SiLU", "SiLUActivation")):
        return None
    return LayerWeights(norms[0][0], qkv.weight, qkv.bias, qkv.sizes, attn.o_proj.weight, attn.o_proj.bias,
                        norms[1][0], gate_up.weight, gate_up.bias, gate_up.sizes, mlp.down_proj.weight,
                        mlp.down_proj.bias, norms[0][1])


def attention_inputs(h: torch.Tensor, w: LayerWeights, cos: torch.Tensor, sin: torch.Tensor, head_dim: int,
                     compute: torch.dtype | None, cache: torch.dtype, rotate_half: Any) -> tuple:
    """q, k, v [n, T, heads, d] of the float32 residual stream h [n, T, hidden], q and k rotated,
    all three in the cache's dtype (SlotModel._attend's projections and rope: the same rotary)."""
    x = F.rms_norm(h, (h.shape[-1],), w.in_norm, w.eps)
    if compute is not None:
        x = x.to(compute)
    n, t = h.shape[0], h.shape[1]
    q, k, v = (y.view(n, t, -1, head_dim) for y in F.linear(x, w.qkv, w.qkv_bias).split(w.qkv_sizes, -1))
    q, k = rotary(q, k, cos, sin, cache, rotate_half)
    return q, k, v.to(cache)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype,
           rotate_half: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """q [n, T, heads, d] and k [n, T, kv_heads, d] rotated (cos, sin [n, T, 1, d]) and cast to
    `dtype`: transformers' apply_rotary_pos_emb with the model's rotate_half, on q and k as one
    tensor (the same values, 5 kernels a layer fewer than rotating and casting them apart)."""
    qk = torch.cat([q, k], dim=2)
    qk = ((qk * cos) + (rotate_half(qk) * sin)).to(dtype)
    return qk[:, :, :q.shape[2]], qk[:, :, q.shape[2]:]


def mlp_block(r: torch.Tensor, attended: torch.Tensor, w: LayerWeights, compute: torch.dtype | None) -> torch.Tensor:
    """The layer's output from its input r and its attention's output before o_proj
    (SlotModel.forward's residual adds around o_proj and _mlp)."""
    h = r + F.linear(attended, w.o, w.o_bias)
    x = F.rms_norm(h, (h.shape[-1],), w.post_norm, w.eps)
    if compute is not None:
        x = x.to(compute)
    gate, up = F.linear(x, w.gate_up, w.gate_up_bias).split(w.gate_up_sizes, -1)
    return h + F.linear(F.silu(gate) * up, w.down, w.down_bias)


EAGER_REGIONS = (attention_inputs, mlp_block)  # the same, uncompiled: where compiling them fails


@functools.cache
def compiled_regions() -> tuple[Any, Any]:
    """The two regions under torch.compile, one pair per process (every engine and layer shares
    them: a layer's weights are arguments, of the same shapes in every layer). Decode rows and
    prefill tokens are dynamic sizes, each kind compiled first from the same zeros in every process
    (FirstShapes), and inductor's deterministic mode keeps it from choosing kernels by timing
    them. Before, a run resumed in a new process sampled other tokens than the original process;
    with both, every sampled count of the resumed step was the original's (docs/gpu/verl_in_workers,
    call4_regions against call7_first_shapes). The price: ~14 s more compiling in a process's first step.
    Decode shapes compile in the eager run before a CUDA graph's capture
    (erl.rollout.graphs.DecodeGraphs.warm), never inside it."""
    import torch._inductor.config

    from erl.rollout.compiling import FirstShapes, allow_recompiles, compile_options

    options = compile_options("default", eager_casts=True)
    if hasattr(torch._inductor.config, "deterministic"):  # torch >= 2.8
        options["deterministic"] = True
    allow_recompiles(32)  # decode, prefill, a one-token prefill, autocast or not
    return (FirstShapes(torch.compile(attention_inputs, options=options)),
            FirstShapes(torch.compile(mlp_block, options=options)))
