"""Decode attention in FlexAttention's decoding kernel (erl.rollout.kv, `decode_attention="flex"`).

The memory-efficient kernel's variable-length mode, the engine's default, pads each row's few
query heads to a 64-row tile and read the keys at ~1.5 TB/s on an H200: 3.70 ms of a 7.10 ms
decode step at 384 rows of 1,024 slots. FlexAttention's decoding kernel packs a KV head's query
heads into one tile and splits each row's keys across thread blocks: 2.15 ms, the step 5.68 ms
(docs/gpu/host_split/call1/slot_forward.txt). The cache is seen as one paged sequence of
`slots x capacity` positions in blocks of BLOCK: row i reads the blocks of its slot, whole ones
without a mask, the last partial one through `mask_mod`. Inductor picks the decoding kernel only
for a power-of-two number of query heads per KV head (`_use_flex_decoding` in
torch/_inductor/kernel/flex): SmolLM2's 3 are padded with zero queries to 4, their outputs dropped.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from erl.rollout.compiling import allow_recompiles

BLOCK = 128  # positions a KV block; a slot's capacity must be a multiple of it (its blocks are its own)
# Decode shapes (rows bucket x cache size) each compile the kernel once, outside the CUDA graph
# capture (erl.rollout.graphs: `warm`); dynamo's default of 8 per function would send the ninth
# to eager flex_attention, which materialises every score: rows x heads x slots x capacity floats.
# Past this limit the call fails instead (FlexFailed: the engine decodes with the memory-efficient
# kernel from then on), rather than run on so.
RECOMPILE_LIMIT = 64
_compiled: dict[str, Any] = {}


class FlexFailed(RuntimeError):
    """flex_decode could not run: its kernel failed to compile (no C compiler for Triton, say) or
    passed the recompile limit. The engine's forward then decodes with the memory-efficient kernel
    (erl.rollout.kv.SlotModel.forward), as the compiled regions run eagerly when they fail."""


def flex_attention_fn(device: torch.device) -> Any:
    """flex_attention compiled (its kernels exist only compiled) on CUDA; eager elsewhere (CPU
    tests: exact, slow, fine at a test's size)."""
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if "cuda" not in _compiled:
        allow_recompiles(RECOMPILE_LIMIT)
        _compiled["cuda"] = torch.compile(flex_attention, dynamic=False)
    return _compiled["cuda"]


def _no_eager_fallback() -> Any:
    """Dynamo raises, for this call only, where past its recompile limit it would run the function
    eagerly (a CUDA graph replays without entering here: the cost is the warm runs' and captures')."""
    cfg = torch._dynamo.config
    if hasattr(cfg, "fail_on_recompile_limit_hit"):
        return cfg.patch(fail_on_recompile_limit_hit=True)
    return contextlib.nullcontext()


def decode_block_mask(slot: torch.Tensor, lengths: torch.Tensor, slots: int, capacity: int) -> Any:
    """The BlockMask under which decode row i reads the first lengths[i] positions of slot
    slot[i], in a cache of `slots` x `capacity` positions taken as one sequence. Built from
    device tensors only (no host sync), so a CUDA graph records it with the step."""
    from torch.nn.attention.flex_attention import BlockMask

    if capacity % BLOCK:
        raise ValueError(f"flex decode attention needs a capacity that is a multiple of {BLOCK}, got {capacity}")
    total = slots * capacity // BLOCK
    base = slot.to(torch.int64) * capacity
    length = lengths.to(torch.int64)
    first = (base // BLOCK).to(torch.int32)
    full = (length // BLOCK).to(torch.int32)
    part = (length % BLOCK > 0).to(torch.int32)
    j = torch.arange(total, dtype=torch.int32, device=slot.device)  # a column per KV block
    full_idx = (first[:, None] + j).clamp(max=total - 1)
    part_idx = (first[:, None] + full[:, None] + j).clamp(max=total - 1)

    def mask_mod(b, h, q_idx, kv_idx):  # whole: eager flex_attention (CPU) reads every block through it
        return (kv_idx >= base[b]) & (kv_idx < base[b] + length[b])

    def per_row(t: torch.Tensor) -> torch.Tensor:  # [n, 1 head (shared), 1 query block, ...]
        return t[:, None, None]

    return BlockMask.from_kv_blocks(per_row(part), per_row(part_idx), per_row(full), per_row(full_idx),
                                    BLOCK_SIZE=(BLOCK, BLOCK), mask_mod=mask_mod, seq_lengths=(1, total * BLOCK),
                                    compute_q_blocks=False)


def flex_decode(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, mask: Any, heads: int,
                scaling: float) -> torch.Tensor:
    """q [n, 1, heads, d] (one new token a row) against the position-major cache kc, vc
    ([slots, kv_heads, capacity, d] views) as `mask` allows. Returns [n, 1, heads x d]."""
    n, d = q.shape[0], q.shape[-1]
    slots, kvh, cap = kc.shape[0], kc.shape[1], kc.shape[2]
    g = heads // kvh
    wide = 1 << (g - 1).bit_length()  # query heads a KV head, padded to a power of two
    qq = F.pad(q.reshape(n, kvh, g, d), (0, 0, 0, wide - g)).reshape(n, kvh * wide, 1, d).to(kc.dtype)
    k = kc.transpose(1, 2).reshape(1, slots * cap, kvh, d).transpose(1, 2)  # [1, kvh, slots x cap, d]: views
    v = vc.transpose(1, 2).reshape(1, slots * cap, kvh, d).transpose(1, 2)
    flex = flex_attention_fn(q.device)
    try:
        with _no_eager_fallback():
            out = flex(qq, k, v, block_mask=mask, scale=scaling, enable_gqa=True)  # [n, kvh x wide, 1, d]
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # a compiler's failure: the caller decodes without flex
        first = str(exc).split("\n")[0][:300]
        raise FlexFailed(f"{type(exc).__name__}: {first}") from exc
    return out.reshape(n, kvh, wide, d)[:, :, :g].reshape(n, 1, -1)
