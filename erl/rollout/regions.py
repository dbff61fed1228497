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
A packed prefill (several rows' new tokens end to end, CUDA) runs each layer as one third region,
`packed_layer`: both of the above with the cache writes and the variable-length attention between
them. Its shapes change with every prefill, so it is compiled for dynamic shapes from the start, and
a prefill costs the host one compiled call a layer where the regions and the eager ops between them
queued ~25 ms of launches (docs/gpu/collect_tail).
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


def varlen_attention(qq: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                     max_q: int, max_k: int, lengths: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """The memory-efficient kernel in variable-length mode (CUDA) over a position-major cache seen as
    one token axis, kf and vf [slots x positions, kv_heads, d]: query sequence i is qq's rows
    cu_q[i]:cu_q[i + 1] (qq [1, rows, kv_heads, d]), its keys the lengths[i] positions from cu_k[i];
    `causal`: aligned from the bottom right (a prefill's new tokens after the KV held before them)."""
    return torch.ops.aten._efficient_attention_forward(qq, kf[None], vf[None], None, cu_q, cu_k, max_q, max_k, 0.0,
                                                       2 if causal else 0, False, scale=scale, seqlen_k=lengths)[0]


def packed_attention(q: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                     lengths: torch.Tensor, longest: int, keys: int, scale: float) -> torch.Tensor:
    """Prefill attention of q [1, N, heads, d], several rows' new tokens end to end, causal from the
    bottom right: a row's i-th new token sees its slot's positions up to its own. The kernel has no
    grouped heads, and folding them into query rows (as decode does) would break the causal
    alignment, so each (query head of a KV head, row) is a sequence of its own: sequence (j, i) is
    the j-th query head of every KV head on row i's tokens (erl.rollout.layout.packed_prefill_inputs:
    cu_q, cu_k and lengths over the g x n sequences). Returns [1, N, heads x d]."""
    n, kvh, d = q.shape[1], kf.shape[1], kf.shape[2]
    g = q.shape[2] // kvh
    qq = q[0].reshape(n, kvh, g, d).permute(2, 0, 1, 3).reshape(1, g * n, kvh, d)
    out = varlen_attention(qq, kf, vf, cu_q, cu_k, longest, keys, lengths, True, scale)
    return out.view(g, n, kvh, d).permute(1, 2, 0, 3).reshape(1, n, -1)


def packed_layer(h: torch.Tensor, w: LayerWeights, kf: torch.Tensor, vf: torch.Tensor, flat: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, lengths: torch.Tensor,
                 longest: int, keys: int, head_dim: int, scale: float, compute: torch.dtype | None,
                 rotate_half: Any) -> torch.Tensor:
    """A fused layer of a packed prefill (h [1, N, hidden]): attention_inputs, the new tokens' K/V
    written at their rows `flat` [N] (slot x positions + position) of the cache seen as kf, vf,
    packed_attention, mlp_block (SlotModel._attend_cached's writes, the same formulas)."""
    q, k, v = attention_inputs(h, w, cos, sin, head_dim, compute, kf.dtype, rotate_half)
    kf.index_copy_(0, flat, k[0])
    vf.index_copy_(0, flat, v[0])
    return mlp_block(h, packed_attention(q, kf, vf, cu_q, cu_k, lengths, longest, keys, scale), w, compute)


EAGER_REGIONS = (attention_inputs, mlp_block, packed_layer)  # the same, uncompiled: where compiling them fails


@functools.cache
def compiled_regions() -> tuple[Any, Any, Any]:
    """The three regions under torch.compile, once per process (every engine and layer shares
    them: a layer's weights and cache are arguments, of the same shapes in every layer). The two
    around attention start with static shapes and turn dynamic where a second call differs
    (torch.compile's default): their decode rows compile once. Decode shapes compile in the eager
    run before a CUDA graph's capture (erl.rollout.graphs.DecodeGraphs.warm), never inside it.
    The packed layer is dynamic from the start (a one-token prefill compiles apart)."""
    from erl.rollout.compiling import allow_recompiles, compile_options

    options = compile_options("default", eager_casts=True)
    allow_recompiles(32)  # decode, prefill, a one-token prefill, autocast or not
    return (torch.compile(attention_inputs, options=options), torch.compile(mlp_block, options=options),
            torch.compile(packed_layer, options=options, dynamic=True))
