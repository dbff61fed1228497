"""One decode step's attention over the slot cache (CUDA): the engine's way (dense rows up to a
key bucket, an additive mask, memory-efficient SDPA) against the memory-efficient kernel's
variable-length mode, which reads only each row's own keys (per-row key lengths, rows anywhere
in the cache, no idle rows, no mask). Same random cache and queries; prints the largest output
difference and the GPU time of each, side by side, at the GPU preset's shapes.

    PYTHONPATH=. python benchmarks/decode_attention.py --slots 1024 --active 380 --capacity 1152

SmolLM2-135M's attention: 9 query heads over 3 KV heads of 64; the 3 query heads of a KV head
are folded into 3 query rows of it, as erl.rollout.kv does.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def engine_way(q, kc, vc, rows, pos, keys, span, scale):
    """(A call of) erl.rollout.kv's decode attention, its mask made once as a forward makes it: the first `span` slots in place (BHMK cache), the
    active rows' queries among them, every key up to `keys` read, the rest masked."""
    n = span
    g = q.shape[1] // kc.shape[1]
    qq = torch.zeros(n, kc.shape[1], g, q.shape[-1], dtype=q.dtype, device=q.device)
    qq[rows] = q.view(len(rows), kc.shape[1], g, -1)
    p = torch.full((n,), kc.shape[2] - 1, device=q.device)
    p[rows] = pos
    seen = torch.arange(keys, device=q.device)[None, None, None, :] <= p[:, None, None, None]
    mask = torch.zeros(seen.expand(n, 1, g, keys).shape, dtype=q.dtype, device=q.device)
    mask.masked_fill_(~seen, float("-inf"))
    return lambda: F.scaled_dot_product_attention(qq, kc[:n, :, :keys], vc[:n, :, :keys], attn_mask=mask,
                                                  scale=scale)[rows].reshape(len(rows), -1, q.shape[-1])


def varlen_way(q, kc, vc, rows, pos, cap, scale):
    """(A call of) the memory-efficient kernel in variable-length mode over the same cache (as BMHK: a
    [slots, capacity, kv_heads, d] view): row i's keys start at slot rows[i]'s first position
    and number pos[i] + 1."""
    n, kvh = len(rows), kc.shape[1]
    g = q.shape[1] // kvh
    k = kc.transpose(1, 2).reshape(1, -1, kvh, kc.shape[-1]) if kc.transpose(1, 2).is_contiguous() else None
    if k is None:
        raise SystemExit("varlen needs a [slots, capacity, kv_heads, d] cache")
    v = vc.transpose(1, 2).reshape(1, -1, kvh, vc.shape[-1])
    qq = q.view(n, kvh, g, -1).transpose(1, 2).reshape(1, n * g, kvh, -1)
    cu_q = torch.arange(0, n + 1, device=q.device, dtype=torch.int32) * g
    cu_k = torch.cat([rows.to(torch.int32) * cap, torch.zeros(1, dtype=torch.int32, device=q.device)])
    lens = (pos + 1).to(torch.int32)
    return lambda: torch.ops.aten._efficient_attention_forward(
        qq, k, v, None, cu_q, cu_k, g, cap, 0.0, 0, False, scale=scale, seqlen_k=lens)[0].view(
        n, g, kvh, -1).transpose(1, 2).reshape(n, -1, q.shape[-1])


def timed(fn, reps=50):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", type=int, default=1024)
    ap.add_argument("--active", type=int, default=380, help="decoding rows, spread over the slots")
    ap.add_argument("--capacity", type=int, default=1152)
    ap.add_argument("--min-len", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=1000)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("decode_attention.py needs CUDA")
    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    kvh, g, d = 3, 3, 64
    # BMHK storage, seen as BHMK by the engine's way (a transposed view: same numbers)
    kc = torch.randn(args.slots, args.capacity, kvh, d, device=dev, dtype=dt).transpose(1, 2)
    vc = torch.randn(args.slots, args.capacity, kvh, d, device=dev, dtype=dt).transpose(1, 2)
    rows = torch.randperm(args.slots, device=dev)[:args.active].sort().values
    pos = torch.randint(args.min_len, args.max_len, (args.active,), device=dev)
    q = torch.randn(args.active, kvh * g, d, device=dev, dtype=dt)
    scale = d ** -0.5
    span = int(rows.max()) + 1
    keys = -(-(int(pos.max()) + 1) // 128) * 128
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION]):
        call = engine_way(q, kc, vc, rows, pos, keys, span, scale)
        a, ta = call(), timed(call)
    call = varlen_way(q, kc, vc, rows, pos, args.capacity, scale)
    b, tb = call(), timed(call)
    print(f"{args.active} rows over {args.slots} slots (span {span}), keys {args.min_len}-{args.max_len} "
          f"(bucket {keys}): engine's way {ta:.3f} ms, varlen {tb:.3f} ms, ratio {ta / tb:.2f}; "
          f"max |difference| {(a.float() - b.float()).abs().max().item():.3g}, equal {torch.equal(a, b)}")


if __name__ == "__main__":
    main()
