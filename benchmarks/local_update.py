"""Local-trainer cost on CPU, side by side in one run: fp32 vs bf16 autocast for the update
(full fine-tuning vs LoRA on the top blocks, LM head over all positions vs response positions
only) and for batched generation (what a rollout does). Whether bf16 pays depends on the CPU:
with AMX tiles it is several times faster, with AVX512-BF16 alone it can be slower than fp32;
`trainer.precision=auto` follows that (erl.trainers.local.trainer.resolve_precision).

    python benchmarks/local_update.py                  # SmolLM2-135M-shaped random model
    python benchmarks/local_update.py --layers 4 --rows 4 --repeats 1   # a quick look

No download: the model is randomly initialised with SmolLM2-135M's shape (the weights do not
change the cost). Prints seconds per update of `rows` rows and ratios to the fp32 baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch


def build(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, max_position_embeddings=4096))


def one_update(model, ids, resp: int, bf16: bool, keep_all: bool) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    with ctx:
        out = model(input_ids=ids, use_cache=False, logits_to_keep=0 if keep_all else resp + 1)
    logits = out.logits[:, -resp - 1:-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, -resp:].unsqueeze(-1)).mean()
    (-logp).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    for p in params:
        p.grad = None
    return time.perf_counter() - start


def one_generate(model, prompts, new_tokens: int, bf16: bool) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    with ctx, torch.no_grad():
        model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--rows", type=int, default=4, help="rows per micro-batch (the default config's)")
    ap.add_argument("--prompt", type=int, default=160)
    ap.add_argument("--response", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gen-batch", type=int, default=16, help="sequences per generate call")
    ap.add_argument("--new-tokens", type=int, default=16, help="the default config's erl.max_new_tokens")
    args = ap.parse_args()
    ids = torch.randint(0, 49152, (args.rows, args.prompt + args.response))

    def timed(model, **kw) -> float:
        one_update(model, ids, args.response, **kw)  # warm-up
        return min(one_update(model, ids, args.response, **kw) for _ in range(args.repeats))

    full = build(args.layers)
    results = {"fp32, full, all logits": timed(full, bf16=False, keep_all=True),
               "fp32, full, response logits": timed(full, bf16=False, keep_all=False),
               "bf16, full, response logits": timed(full, bf16=True, keep_all=False)}
    from peft import LoraConfig, get_peft_model

    top = min(8, args.layers)
    lora = get_peft_model(build(args.layers), LoraConfig(
        r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"], layers_to_transform=list(range(args.layers - top, args.layers))))
    results[f"fp32, LoRA top {top}, response logits"] = timed(lora, bf16=False, keep_all=False)
    results[f"bf16, LoRA top {top}, response logits"] = timed(lora, bf16=True, keep_all=False)
    base = results["fp32, full, all logits"]
    tokens = ids.numel()
    print(f"update of {args.rows} rows x {ids.shape[1]} tokens, {args.layers} layers, {torch.get_num_threads()} threads")
    for name, sec in results.items():
        print(f"  {name:36s} {sec:7.2f} s   {tokens / sec:7.0f} tok/s   speed-up x{base / sec:.2f}")

    full.eval()
    prompts = torch.randint(1, 49152, (args.gen_batch, args.prompt))
    gen = {}
    for bf16 in (False, True):
        one_generate(full, prompts[:, :16], 2, bf16)  # warm-up
        gen["bf16" if bf16 else "fp32"] = min(one_generate(full, prompts, args.new_tokens, bf16)
                                              for _ in range(args.repeats))
    made = args.gen_batch * args.new_tokens
    print(f"generate {args.gen_batch} x {args.new_tokens} new tokens after {args.prompt}-token prompts (KV cache)")
    for name, sec in gen.items():
        print(f"  {name:36s} {sec:7.2f} s   {made / sec:7.0f} tok/s   speed-up x{gen['fp32'] / sec:.2f}")


if __name__ == "__main__":
    main()
