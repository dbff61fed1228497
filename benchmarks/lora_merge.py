"""Rollout with peft's LoRA layers vs a LoRA-merged copy (erl.rollout.merged), side by side.

The default run's model (SmolLM2-135M-Instruct, LoRA r=16 on 7 modules of the top 8 blocks, as
configs/local/model) generates the first turn of the default run's eval grids through the
rollout engine, greedily, once with the peft model and once with the merged copy, alternating
(`--repeats` rounds; the fastest of each is kept). The adapters get random non-zero B first, as
after training, so the merge has something to fold.

    python benchmarks/lora_merge.py                    # CPU, the default run's sizes
    python benchmarks/lora_merge.py --tasks 256 --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from erl.core.interfaces import SamplingParams
from erl.envs.registry import make_env, make_tasks
from erl.models.chat import chat_ids
from erl.rollout.engine import RolloutEngine
from erl.rollout.merged import MergedLoRA
from erl.trainers.local.run import load_policy_model

LORA = {"enabled": True, "r": 16, "alpha": 32, "dropout": 0.0, "last_layers": 8,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    model, tok = load_policy_model({"path": args.model, "lora": LORA}, device, seed=0)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    merged = MergedLoRA.of(model)
    prompts = []
    for task in make_tasks("frozenlake", args.tasks, split="val"):
        env = make_env(task)
        obs, _ = env.reset()
        prompts.append(chat_ids(tok, [{"role": "system", "content": env.system_prompt(task)},
                                      {"role": "user", "content": obs}]))
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0)
    times: dict[str, list[float]] = {"peft": [], "merged": []}
    tokens: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, m in (("peft", model), ("merged", merged.model)):
            engine = RolloutEngine(m, tok, slots=len(prompts))
            start = time.perf_counter()
            out = engine.generate_batch(prompts, params)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            tokens[name] = [g.token_ids for g in out]
    same = sum(a == b for a, b in zip(tokens["peft"], tokens["merged"]))
    best = {k: min(v) for k, v in times.items()}
    print(f"{args.tasks} prompts x {args.new_tokens} new tokens, {device.type}, {len(merged.pairs)} adapted layers")
    for name in ("peft", "merged"):
        print(f"  {name:7s} best {best[name]:.2f} s   all {[round(t, 2) for t in times[name]]}")
    print(f"  peft / merged: {best['peft'] / best['merged']:.2f}x   same greedy tokens: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
