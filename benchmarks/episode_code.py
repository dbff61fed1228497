"""The episodes' own host code in a collect, ERL's against RLVR's: everything but generation.

On one H200 the rollout engine made generation cheap enough that an ERL collect is bound by the
host, and a third of it is the episodes' code (chat templates, tokenization, environments,
reflections, memory): time/rollout - time/rollout_engine was 1.0-1.2 s for ERL against 0.6-0.8 s
for RLVR (docs/gpu/collect_tail). This runs the local trainer's collect, with its config, under a
policy that answers at once with canned replies, batched as the engine batches them (every
runnable episode reaches its request first): moves cycle through the four directions, so some
attempts succeed and most reflect, and every reflection is one fixed instruction. What is timed
is the episodes' code alone, on any machine, ERL and RLVR alternating.

    PYTHONPATH=. python benchmarks/episode_code.py                       # preset=gpu's 64 tasks x 8
    PYTHONPATH=. python benchmarks/episode_code.py --profile             # + cProfile of one ERL collect
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import erl.cli  # noqa: F401 -- erl-train's OpenMP wait policy, set before torch loads OpenMP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_step import local_trainer

from erl.core.interfaces import Generation, SamplingParams
from erl.rollout.batching import BatchingPolicy

# About as long as a 135M model's replies at preset=gpu's limits (16 tokens a move, 48 a reflection)
MOVES = tuple(f"Looking at the grid, the best move now is {d}." for d in ("right", "down", "left", "up"))
REFLECTION = ("<prompt>The agent fell into a hole because it moved down too early. Next time, move right along "
              "the top row until the wall, then go down step by step, checking the squares below.</prompt>")


class InstantPolicy(BatchingPolicy):
    """Canned replies, encoded once: a move (the next of MOVES, call by call) or, for a request of
    `reflection_tokens` new tokens, REFLECTION. Each ends with the tokenizer's eos."""

    def __init__(self, tokenizer, reflection_tokens: int):
        super().__init__(tokenizer)
        self.reflection_tokens = reflection_tokens
        self.replies = {text: tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
                        for text in (*MOVES, REFLECTION)}
        self.calls = 0

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        out = []
        for _ in prompts:
            text = REFLECTION if params.max_new_tokens == self.reflection_tokens else MOVES[self.calls % len(MOVES)]
            self.calls += 1
            ids = self.replies[text][:params.max_new_tokens]
            out.append(Generation(token_ids=ids, logprobs=[-0.5] * len(ids), text=text, finish_reason="stop"))
        self.stats["sequences"] += len(out)
        return out


def instant(trainer):
    policy = InstantPolicy(trainer.tokenizer, trainer.erl.max_reflection_tokens)
    trainer.policy = trainer.workflow.policy = policy
    return trainer


def timed_collect(trainer) -> tuple[float, int]:
    """One collect of the trainer's next tasks: seconds, sequences generated."""
    before = trainer.policy.stats["sequences"]
    start = time.perf_counter()
    trainer.collect(trainer.next_tasks())
    return time.perf_counter() - start, trainer.policy.stats["sequences"] - before


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], help="an erl-train override for both (repeatable)")
    p.add_argument("--collects", type=int, default=3, help="timed collects of each, after one untimed")
    p.add_argument("--profile", action="store_true", help="cProfile one more ERL collect (functions by cumulative time)")
    args = p.parse_args(argv)
    sets = ["trainer.tasks_per_step=64", "erl.n_attempt=8", "env.n_train=1024",
            *[s for s in args.set if not s.startswith("erl.mode=")]]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {mode: instant(local_trainer(sets, mode, Path(tmp) / mode)) for mode in ("erl", "rlvr")}
        times: dict[str, list[float]] = {"erl": [], "rlvr": []}
        seqs: dict[str, int] = {}
        for i in range(args.collects + 1):
            for mode, trainer in runs.items():
                secs, seqs[mode] = timed_collect(trainer)
                if i:  # the first collect of each warms caches up
                    times[mode].append(secs)
        erl, rlvr = (statistics.median(times[m]) for m in ("erl", "rlvr"))
        t = runs["erl"]
        print(f"episodes' code of a collect ({t.cfg.tasks_per_step} tasks, ERL n={t.erl.n_attempt}, RLVR "
              f"{2 * t.erl.n_attempt} first attempts a task; {' '.join(args.set) or 'the default config'}), "
              f"median of {args.collects}:")
        for mode, secs in (("ERL", erl), ("RLVR", rlvr)):
            n = seqs[mode.lower()]
            print(f"  {mode:>4}: {secs:.3f} s, {n} generate calls, {1e3 * secs / max(n, 1):.3f} ms a call")
        print(f"ERL / RLVR: {erl / rlvr:.3f}   ERL - 1.5 x RLVR: {erl - 1.5 * rlvr:+.3f} s")
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(timed_collect, t)
            pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(45)
    return 0


if __name__ == "__main__":
    sys.exit(main())
