"""What KV lending (erl/rollout/prefix.py) saves at GPU scale, and what planning it costs on
the host, without a model: synthetic token ids shaped like a `preset=gpu` ERL collect.

    PYTHONPATH=. python benchmarks/lending_plan.py

Two admissions: (1) attempt 1, 64 tasks x 8 samples of 200-token prompts (a 90-token system
prompt shared by all) into an empty 512-slot cache; (2) 64 second attempts (the system prompt,
a 100-token reflection appended to it, the task's 110 tokens) beside 960 slots that hold first
attempts (a task's prompt and 300 generated tokens). Prints the prefill tokens
without and with lending, their ratio, and the plan's wall time (numpy, on the host: a GPU
step pays it too).
"""

from __future__ import annotations

import time

import numpy as np

from erl.rollout.prefix import plan_sharing


def prefill(prompts: list[list[int]], reuse: list[int]) -> int:
    return sum(len(p) - u for p, u in zip(prompts, reuse))


def report(name: str, tok: np.ndarray, held: list[int], admitted: list) -> None:
    t = time.perf_counter()
    plan = plan_sharing(tok, held, admitted)
    ms = (time.perf_counter() - t) * 1000
    prompts = [p for _, _, p in admitted]
    own = prefill(prompts, [u for _, u, _ in admitted])
    lent = prefill(prompts, plan.reuse)
    print(f"{name}: prefill {own:,} tokens without lending, {lent:,} with ({own / max(lent, 1):.1f}x fewer); "
          f"{sum(plan.second)} wait for a lender of their round; plan {ms:.0f} ms")


def main() -> None:
    rng = np.random.default_rng(0)
    system = rng.integers(0, 49000, 90).tolist()
    tasks = [system + rng.integers(0, 49000, 110).tolist() for _ in range(64)]

    tok = np.full((512, 768), -1, dtype=np.int64)
    report("attempt 1, 64 tasks x 8 into an empty cache", tok, [0] * 512,
           [(i, 0, tasks[i // 8]) for i in range(512)])

    tok = np.full((1024, 768), -1, dtype=np.int64)
    for s in range(1024):
        row = tasks[s % 64] + rng.integers(0, 49000, 300).tolist()
        tok[s, :len(row)] = row
    report("64 second attempts beside 960 held slots", tok, [500] * 1024,
           [(s, 0, system + rng.integers(0, 49000, 100).tolist() + tasks[s % 64][90:]) for s in range(64)])


if __name__ == "__main__":
    main()
