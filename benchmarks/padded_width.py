"""Does the padded width alone move a bf16 forward? The same rows (right-padded, causal, no mask:
the local trainer's layout, erl.trainers.local.batch.response_logprobs) run at several padded
widths; per width, the share of their final hidden values that differ from the narrowest run and
by how many bf16 steps. A kernel whose tiling follows the shape (a matmul's blocks over rows x
width, attention's blocks over the sequence) rounds otherwise, so log-probs of the same tokens
move with the batch around them: the floor under any engine-against-trainer figure in bf16.

    PYTHONPATH=. python benchmarks/padded_width.py --model ~/.cache/erl/models/smollm2-135m-instruct
    PYTHONPATH=. python benchmarks/padded_width.py --device cuda --model /tmp/smollm2
"""

from __future__ import annotations

import argparse
import random
import sys

import torch


def bf16_steps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in units of bf16's spacing at |a| (8 significant bits)."""
    spacing = torch.exp2(torch.floor(torch.log2(a.abs().clamp(min=2.0 ** -126))) - 7)
    return (a - b).abs() / spacing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a Hugging Face folder (default: the tiny model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--widths", default="200,256,400,800")
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM

    device = torch.device(args.device)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    else:
        from erl.models.tiny import build_tiny_model, build_tiny_tokenizer
        model = build_tiny_model(build_tiny_tokenizer()).to(torch.bfloat16)
    model = model.to(device).eval()
    rng = random.Random(0)
    vocab = model.config.vocab_size
    rows = [[rng.randrange(3, vocab) for _ in range(rng.randint(60, 150))] for _ in range(args.rows)]

    def hidden(width: int) -> list[torch.Tensor]:
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
        with torch.no_grad():
            h = model.get_decoder()(input_ids=ids.to(device), use_cache=False).last_hidden_state
        return [h[i, :len(row)].float().cpu() for i, row in enumerate(rows)]

    narrow = max(map(len, rows))
    widths = [int(w) for w in args.widths.split(",")]
    if min(widths) < narrow:
        raise SystemExit(f"--widths: each must hold the longest row ({narrow} tokens), got {min(widths)}")
    base = hidden(narrow)
    print(f"{args.model or 'tiny model'} bf16 on {args.device}: {len(rows)} rows of 60-150 tokens, right-padded; "
          f"final hidden values against the same rows padded to {narrow}", flush=True)
    for width in widths:
        other = hidden(width)
        steps = torch.cat([bf16_steps(a, b).flatten() for a, b in zip(base, other)])
        most = max(float((a - b).abs().max()) for a, b in zip(base, other))
        moved = steps[steps > 0]  # near 0 the spacing is tiny: the median, not the max, of the steps
        print(f"width {width:5d}: {float((steps > 0).float().mean()):.4f} of the values differ"
              + (f", by a median {float(moved.median()):.1f} bf16 steps; max |difference| {most:.3g}"
                 if len(moved) else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
