"""verl's log-prob fallback (no flash-attn) vs erl.core.logprobs.token_logprobs, side by side.

verl's FSDP engine hands `logprobs_from_logits` the logits of a micro-batch flattened to
[tokens, vocab]; without flash-attn it loops over that first dimension, one log-softmax per
token. This times forward + backward of both on the same bf16 logits (SmolLM2's 49,152-word
vocabulary by default), alternating, best of `--repeats`, and checks they agree.

    python benchmarks/verl_logprobs.py                          # CPU, 2,048 tokens
    python benchmarks/verl_logprobs.py --tokens 16384 --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch
from verl.utils.torch_functional import logprobs_from_logits_v2

from erl.core.logprobs import token_logprobs


def timed(fn, logits, labels, device) -> tuple[float, torch.Tensor]:
    x = logits.detach().requires_grad_()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn(x, labels)
    out.float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out.detach().float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(args.tokens, args.vocab, generator=g, device=device).mul_(4).to(torch.bfloat16)
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=g, device=device)
    best = {"verl": float("inf"), "chunked": float("inf")}
    outs = {}
    for _ in range(args.repeats):
        for name, fn in (("verl", logprobs_from_logits_v2), ("chunked", token_logprobs)):
            dt, outs[name] = timed(fn, logits, labels, device)
            best[name] = min(best[name], dt)
    diff = (outs["verl"] - outs["chunked"]).abs().max().item()
    print(f"device {device}, {args.tokens} tokens x {args.vocab} vocab, bf16 logits, forward + backward")
    for name, dt in best.items():
        print(f"  {name:8s} {dt * 1e3:9.1f} ms  ({args.tokens / dt:,.0f} tokens/s)")
    print(f"  speed-up chunked / verl: {best['verl'] / best['chunked']:.1f}x; max |difference| {diff:.2e} "
          f"(verl's bf16 log-softmax against fp32)")


if __name__ == "__main__":
    main()
