"""The forward pass of a Llama-family model over a slot-indexed KV cache.

Runs the model's own submodules (embeddings, norms, q/k/v/o projections, MLP, rotary
embedding, lm_head), so peft LoRA adapters and Qwen2's qkv bias or Qwen3's q/k norms work
unchanged; only the cache layout and the attention call are ours. The cache is one
[slots, kv_heads, capacity, head_dim] tensor per layer for keys and values: a row is a
slot, a column a token position, so a sequence keeps its KV for as long as it owns its slot.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
import torch.nn.functional as F

from erl.rollout.device import attention_kernels, to_device
from erl.rollout.flex import FlexFailed, decode_block_mask, flex_decode
from erl.rollout.regions import EAGER_REGIONS, LayerWeights, layer_weights, rms_params, rotary

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")
logger = logging.getLogger(__name__)


def unwrap(model: Any) -> Any:
    """The *ForCausalLM under a peft wrapper (its layers still carry the adapters)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def unsupported_reason(model: Any) -> str | None:
    """Why the engine cannot run this model, or None when it can."""
    base = unwrap(model)
    cfg = getattr(base, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED:
        return f"architecture {kind!r} is not one of {SUPPORTED}"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", kind == "mistral"):
        return "sliding-window attention is not implemented"
    inner = getattr(base, "model", None)
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(inner, name):
            return f"model.model has no {name}"
    if not hasattr(base, "lm_head"):
        return "model has no lm_head"
    return None


class SlotModel:
    """Forward passes that read and write the slot cache; no sampling, no bookkeeping."""

    def __init__(self, model: Any):
        base = unwrap(model)
        self.base, self.inner = base, base.model
        cfg = base.config
        self.kv_heads = cfg.num_key_value_heads
        self.heads = cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.layers = list(self.inner.layers)
        attn = self.layers[0].self_attn
        self.rotate_half = sys.modules[type(attn).__module__].rotate_half
        self.scaling = getattr(attn, "scaling", self.head_dim ** -0.5)
        # The cache tensors can be larger than the engine's slots and capacity (`capacity`): a reset
        # keeps them (and the CUDA graphs recorded against them) and only forgets what they hold.
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.capacity = 0  # positions a slot may use: at most the tensors' size
        # Decode attention in the memory-efficient kernel's variable-length mode (CUDA): each row
        # reads its own keys only, where the dense rows read every key up to the bucket, idle rows
        # too. The kernel takes [tokens, kv_heads, d] rows, so the cache is stored position-major
        # ([slots, capacity, kv_heads, d]) and seen through a transposed view everywhere else.
        self.varlen = False
        # ... in that kernel ("efficient") or in FlexAttention's decoding kernel ("flex": erl.rollout.flex)
        self.decode_attention = "efficient"
        # q/k/v and gate/up as one matmul each where the model carries them fused (erl.rollout.fused),
        # and on CUDA float32 RMSNorms as one kernel (F.rms_norm) instead of seven
        self.fused = True
        # None, or the (attention_inputs, mlp_block) pair that runs each fused layer of a float32
        # residual stream around its attention (erl.rollout.regions: compiled on CUDA)
        self.regions: tuple | None = None
        self._weights: list | None = None  # each layer's LayerWeights for the regions, read at their first use

    def clear(self) -> None:
        """No positions in use; the tensors stay allocated (a new phase reuses them)."""
        self.capacity = 0

    def release(self) -> None:
        """Free the tensors (out of memory, a new precision)."""
        self.k, self.v, self.capacity = [], [], 0

    def allocate(self, slots: int, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        """Room for `slots` x `capacity` positions. The tensors stay when they are large enough (a
        slot's positions keep their place, so the running sequences keep their KV); otherwise
        larger ones are made and take over the positions in use."""
        self.capacity, old_cap = capacity, self.capacity
        if (self.k and self.k[0].dtype == dtype and self.k[0].shape[0] >= slots and self.k[0].shape[2] >= capacity
                and self._position_major() == self.varlen):
            return
        old_k, old_v = self.k, self.v
        keep = bool(old_k) and old_k[0].dtype == dtype  # else a new precision: nothing held is of use
        if keep:  # never shrink: a later phase may need the old size again
            slots, capacity = max(slots, old_k[0].shape[0]), max(capacity, old_k[0].shape[2])

        def zeros() -> torch.Tensor:
            if self.varlen:
                return torch.zeros((slots, capacity, self.kv_heads, self.head_dim), dtype=dtype,
                                   device=device).transpose(1, 2)
            return torch.zeros((slots, self.kv_heads, capacity, self.head_dim), dtype=dtype, device=device)

        self.k = [zeros() for _ in self.layers]
        self.v = [zeros() for _ in self.layers]
        if keep:  # the running sequences keep their KV (across layouts too: both are views)
            n = min(old_cap, capacity)
            for new, old in zip(self.k + self.v, old_k + old_v):
                new[:old.shape[0], :, :n] = old[:, :, :n]
        if device.type == "cuda":  # CUDA graphs may then write into them in place
            for t in self.k + self.v:
                torch._dynamo.mark_static_address(t)

    def _position_major(self) -> bool:
        return bool(self.k) and self.k[0].transpose(1, 2).is_contiguous()

    def copy_prefix(self, src: tuple[int, ...], dst: tuple[int, ...], n: tuple[int, ...]) -> None:
        """Slot dst[i] takes the KV of slot src[i]'s first n[i] positions (a shared prompt
        prefix). One indexed copy per tensor, up to the longest n: a row's positions past its
        own n are rewritten by its prefill or masked until its decode writes them."""
        if not src:
            return
        s, d = to_device(src, self.k[0].device), to_device(dst, self.k[0].device)
        m = max(n)
        for t in self.k + self.v:
            t[d, :, :m] = t[s, :, :m]

    def _attend(self, idx: int, attn: Any, h: torch.Tensor, slot: torch.Tensor, rows: torch.Tensor | None,
                write: torch.Tensor, keys: int, mask: torch.Tensor | None, cos_sin, varlen: tuple | None = None,
                packed: tuple | None = None) -> torch.Tensor:
        """One attention block for queries h [n, T, hidden]: write their K/V at `write`, then
        attend to the row's first `keys` positions as `mask` allows. `packed`: h is [1, N, hidden],
        the tokens of several rows end to end, token i of slot slot[i] at position write[0, i]."""
        n, t, _ = h.shape
        qkv = getattr(attn, "erl_qkv", None) if self.fused else None
        if qkv is not None:  # one matmul (erl.rollout.fused)
            q, k, v = (x.view(n, t, -1, self.head_dim) for x in F.linear(h, qkv.weight, qkv.bias).split(qkv.sizes, -1))
        else:
            q = attn.q_proj(h).view(n, t, -1, self.head_dim)
            k = attn.k_proj(h).view(n, t, -1, self.head_dim)
            v = attn.v_proj(h).view(n, t, -1, self.head_dim)
        if hasattr(attn, "q_norm"):  # Qwen3
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = self.rope(q, k, *cos_sin, self.k[idx].dtype)
        return attn.o_proj(self._attend_cached(idx, q, k, v, slot, rows, write, keys, mask, varlen, packed))

    def _attend_cached(self, idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor,
                       rows: torch.Tensor | None, write: torch.Tensor, keys: int, mask: torch.Tensor | None,
                       varlen: tuple | None, packed: tuple | None) -> torch.Tensor:
        """Write k and v [n, T, kv_heads, d] at `write`, then attend q's rows (rotated) to their keys:
        [n, T, heads x d], before o_proj (_attend says what the arguments are)."""
        n, t = q.shape[0], q.shape[1]
        kc, vc = self.k[idx], self.v[idx]
        at = slot.view(write.shape[0], -1)  # [n, 1] against write [n, T]; packed: [1, N] against [1, N]
        kc[at, :, write] = k
        vc[at, :, write] = v.to(vc.dtype)
        if packed is not None:
            return self._attend_packed(q, kc, vc, keys, *packed)
        if varlen is not None:
            return self._attend_varlen(q, kc, vc, keys, *varlen)
        if rows is None:  # the first n slots: a view, no copy
            ks, vs = kc[:n, :, :keys], vc[:n, :, :keys]
        else:
            ks, vs = kc[rows, :, :keys], vc[rows, :, :keys]
        # Grouped-query attention without repeating K/V: the query heads that share a KV head
        # become extra query rows of that head.
        g = self.heads // self.kv_heads
        q = q.transpose(1, 2).reshape(n, self.kv_heads, g * t, self.head_dim)
        out = F.scaled_dot_product_attention(q, ks, vs, attn_mask=mask, scale=self.scaling)
        return out.reshape(n, self.heads, t, self.head_dim).transpose(1, 2).reshape(n, t, -1)

    def _layer_weights(self) -> list:
        """layer_weights of every layer, read once (0.5 ms a forward on a CPU core, on the host's
        path of every prefill): the layers' weights stay the same tensors, updated in place, as the
        CUDA graphs recorded against them require too."""
        if self._weights is None:
            self._weights = [layer_weights(layer) for layer in self.layers]
        return self._weights

    def _in_regions(self, idx: int, h: torch.Tensor, w: LayerWeights, slot: torch.Tensor,
                    rows: torch.Tensor | None, write: torch.Tensor, keys: int, mask: torch.Tensor | None, cos_sin,
                    varlen: tuple | None, packed: tuple | None) -> torch.Tensor:
        attention_inputs, mlp_block = self.regions
        dev = h.device.type
        compute = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        q, k, v = attention_inputs(h, w, *cos_sin, self.head_dim, compute, self.k[idx].dtype, self.rotate_half)
        attended = self._attend_cached(idx, q, k, v, slot, rows, write, keys, mask, varlen, packed)
        return mlp_block(h, attended, w, compute)

    def _attend_varlen(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, keys: int,
                       *inputs: torch.Tensor) -> torch.Tensor:
        """Decode attention (q [n, 1, heads, d]) in variable-length mode: query row i is the g
        query heads of each KV head, its keys the first lengths[i] positions from cu_k[i] in the
        cache taken as one [slots x capacity] token axis (flex: FlexAttention's decoding kernel under
        their BlockMask, _varlen_inputs). Returns [n, 1, heads x d]."""
        if self.decode_attention == "flex":
            return flex_decode(q, kc, vc, *inputs, self.heads, self.scaling)
        cu_q, cu_k, lengths = inputs
        n, kvh, d = q.shape[0], self.kv_heads, self.head_dim
        g = self.heads // kvh
        qq = q.reshape(n, kvh, g, d).transpose(1, 2).reshape(1, n * g, kvh, d)
        out = self._varlen_kernel(qq, kc, vc, cu_q, cu_k, g, keys, lengths, causal=False)
        return out.view(n, g, kvh, d).transpose(1, 2).reshape(n, 1, -1)

    def _varlen_kernel(self, qq: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, cu_q: torch.Tensor,
                       cu_k: torch.Tensor, max_q: int, max_k: int, lengths: torch.Tensor, causal: bool) -> torch.Tensor:
        """The memory-efficient kernel in variable-length mode over the cache taken as one
        [slots x capacity] token axis: query sequence i is qq's rows cu_q[i]:cu_q[i + 1], its keys
        the lengths[i] positions from cu_k[i]; `causal`: aligned from the bottom right (a prefill's
        new tokens after the KV held before them)."""
        kvh, d = self.kv_heads, self.head_dim
        k = kc.transpose(1, 2).reshape(1, -1, kvh, d)  # position-major storage: a view
        v = vc.transpose(1, 2).reshape(1, -1, kvh, d)
        return torch.ops.aten._efficient_attention_forward(qq, k, v, None, cu_q, cu_k, max_q, max_k, 0.0,
                                                           2 if causal else 0, False, scale=self.scaling,
                                                           seqlen_k=lengths)[0]

    def _attend_packed(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, keys: int, cu_q: torch.Tensor,
                       cu_k: torch.Tensor, lengths: torch.Tensor, longest: int) -> torch.Tensor:
        """Prefill attention (q [1, N, heads, d], several rows' new tokens end to end) in the kernel's
        variable-length mode, causal from the bottom right: a row's i-th new token sees its slot's
        positions up to its own (the KV held before it, and its row's tokens up to it). The kernel
        has no grouped heads, and folding them into query rows (as decode does) would break the
        causal alignment, so each (query head of a KV head, row) is a sequence of its own:
        sequence (j, i) is the j-th query head of every KV head on row i's tokens (erl.rollout.
        layout.packed_prefill_inputs: cu_q, cu_k and lengths over the g x n sequences)."""
        n, kvh, d = q.shape[1], self.kv_heads, self.head_dim
        g = self.heads // kvh
        qq = q[0].reshape(n, kvh, g, d).permute(2, 0, 1, 3).reshape(1, g * n, kvh, d)
        out = self._varlen_kernel(qq, kc, vc, cu_q, cu_k, longest, keys, lengths, causal=True)
        return out.view(g, n, kvh, d).permute(1, 2, 0, 3).reshape(1, n, -1)

    def _varlen_inputs(self, slot: torch.Tensor, pos: torch.Tensor, keys: int) -> tuple:
        """cu_q, cu_k, lengths of a decode step's rows (flex: their BlockMask): a row reads its
        slot's positions up to the one it writes; an idle row (writing the scratch column past
        `keys`) reads one."""
        p = pos[:, 0]
        lengths = torch.where(p < keys, p + 1, 1).to(torch.int32)
        if self.decode_attention == "flex":
            return (decode_block_mask(slot, lengths, self.k[0].shape[0], self.k[0].shape[2]),)
        g = self.heads // self.kv_heads
        n = slot.shape[0]
        cu_q = torch.arange(0, (n + 1) * g, g, dtype=torch.int32, device=slot.device)
        cu_k = torch.cat([slot * self.k[0].shape[2], slot.new_zeros(1)]).to(torch.int32)
        return cu_q, cu_k, lengths

    def rope(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """erl.rollout.regions.rotary with the model's rotate_half (a method: the kernel-count test
        swaps it for rotating q and k apart)."""
        return rotary(q, k, cos, sin, dtype, self.rotate_half)

    def _norm(self, norm: Any, x: torch.Tensor) -> torch.Tensor:
        """An RMSNorm of float32 x with a float32 weight (the residual stream under autocast) as one
        CUDA kernel: the same formula as LlamaRMSNorm's seven ops (x / rms(x) x weight, in float32),
        up to the order of the sum of squares. Anything else runs the module."""
        params = rms_params(norm) if self.fused and x.is_cuda and x.dtype == torch.float32 else None
        return F.rms_norm(x, (x.shape[-1],), *params) if params is not None else norm(x)

    def _mlp(self, mlp: Any, x: torch.Tensor) -> torch.Tensor:
        """The MLP, gate and up as one matmul where fused (erl.rollout.fused): the same formula."""
        gate_up = getattr(mlp, "erl_gate_up", None) if self.fused else None
        if gate_up is None:
            return mlp(x)
        gate, up = F.linear(x, gate_up.weight, gate_up.bias).split(gate_up.sizes, -1)
        return mlp.down_proj(mlp.act_fn(gate) * up)

    @staticmethod
    def compute_cast(device_type: str):
        """Under autocast: a norm's float32 output cast once to the autocast dtype, where autocast
        would cast it again for each projection that reads it (q, k, v; gate, up). The same
        values, 3 kernels a layer fewer (tests/test_rollout_engine.py)."""
        if not torch.is_autocast_enabled(device_type):
            return lambda x: x
        dtype = torch.get_autocast_dtype(device_type)
        return lambda x: x.to(dtype)

    def _mask(self, pos: torch.Tensor, keys: int) -> torch.Tensor:
        """[n, 1, g x T, keys]: 0 where a query row may attend a key, -inf where not."""
        n, t = pos.shape
        g = self.heads // self.kv_heads  # a query row per (query head of a KV head, position)
        seen = torch.arange(keys, device=pos.device)[None, None, :] <= pos[:, :, None]  # [n, T, keys]
        seen = seen[:, None, None].expand(n, 1, g, t, keys).reshape(n, 1, g * t, keys)
        # Additive, in the attention's dtype, made once: a boolean mask is converted inside every
        # layer's attention call (30 new tensors of this size a forward instead of one).
        mask = torch.zeros(seen.shape, dtype=self.k[0].dtype, device=pos.device)
        return mask.masked_fill_(~seen, float("-inf"))

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor | None, write: torch.Tensor,
                keys: int, last: torch.Tensor, packed: tuple | None = None) -> torch.Tensor:
        """ids, pos, write [n, T]; rows [n] slot ids (None: the first n slots, in order); last [n]:
        the position in T whose logits are returned ([n, vocab], float32). `packed` (a prefill on
        a position-major cache, CUDA: erl.rollout.layout.packed_prefill_inputs): ids, pos, write
        [1, N] are several rows' tokens end to end, rows [N] their slots, last [n] the index of
        each row's last token, `keys` the longest row. A compiled part that cannot run (no C
        compiler for Triton, say) is said once and replaced from then on, and this forward runs
        again from its input (its cache writes the same positions, rewritten): flex decode
        (FlexFailed) by the memory-efficient kernel, compiled regions (any other failure while they
        are on is taken for theirs) by the same formulas run eagerly. What fails after that is raised."""
        try:
            return self._forward(ids, pos, rows, write, keys, last, packed)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            if isinstance(exc, FlexFailed):
                logger.warning("RolloutEngine: FlexAttention decode failed (%s); decoding with the memory-efficient "
                               "kernel from now on", exc)
                self.decode_attention = "efficient"
            elif self.regions is not None and self.regions != EAGER_REGIONS:
                logger.warning("RolloutEngine: compiled regions failed (%s: %s); running them eagerly from now on",
                               type(exc).__name__, str(exc).split("\n")[0][:300])
                self.regions = EAGER_REGIONS
            else:
                raise
            return self.forward(ids, pos, rows, write, keys, last, packed)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor | None, write: torch.Tensor,
                 keys: int, last: torch.Tensor, packed: tuple | None) -> torch.Tensor:
        h = self.inner.embed_tokens(ids)
        n, t = ids.shape
        cos_sin = [c.unsqueeze(2) for c in self.inner.rotary_emb(h, pos)]  # [n, T, 1, d]: over the heads
        slot = rows if rows is not None else torch.arange(n, device=ids.device)
        flex = self.decode_attention == "flex"  # its eager kernel runs on CPU too (tests)
        varlen = self._varlen_inputs(slot, pos, keys) if self.varlen and t == 1 and (ids.is_cuda or flex) else None
        mask = None if varlen is not None or packed is not None else self._mask(pos, keys)
        compute = self.compute_cast(ids.device.type)
        regions = self.regions is not None and self.fused and h.dtype == torch.float32
        with attention_kernels():
            for i, layer in enumerate(self.layers):
                w = self._layer_weights()[i] if regions else None
                if w is not None:  # the layer around its attention in two compiled regions (erl.rollout.regions)
                    h = self._in_regions(i, h, w, slot, rows, write, keys, mask, cos_sin, varlen, packed)
                    continue
                r = h
                h = r + self._attend(i, layer.self_attn, compute(self._norm(layer.input_layernorm, h)), slot, rows,
                                     write, keys, mask, cos_sin, varlen, packed)
                r = h
                h = r + self._mlp(layer.mlp, compute(self._norm(layer.post_attention_layernorm, h)))
        h = h[0, last] if packed is not None else h[torch.arange(h.shape[0], device=h.device), last]
        return self.base.lm_head(self.inner.norm(h)).float()
