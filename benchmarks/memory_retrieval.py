"""One ERL wave's memory retrievals, ranked once per task against ranked anew each time, side by side.

At the end of its first attempt every failed episode asks the reflection memory for the best
reflection for its task's query (its first observation). A collect of 64 tasks x 8 makes ~400 such
retrievals in one wave, eight of each query, and a full memory (`erl.memory_size`, 256) is scored
whole by each (FrozenLake's entries share one key). ReflectionMemory keeps a retrieval's ranking
until the memory changes; this prints what that saves, with the ranking redone every time (the
cache emptied before each retrieval) as the baseline. Both return the same entries.

    python benchmarks/memory_retrieval.py                      # 64 FrozenLake tasks x 8, memory of 256
    python benchmarks/memory_retrieval.py --tasks 16 --size 64
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from erl.envs.registry import make_env, make_tasks
from erl.memory import ReflectionMemory

WORDS = ("move", "right", "down", "left", "up", "avoid", "the", "hole", "goal", "row", "first", "then")


def queries(tasks: int, seed: int) -> list[str]:
    """Each task's first observation: the query its episodes retrieve with."""
    return [make_env(task).reset()[0] for task in make_tasks("frozenlake", tasks, seed=seed)]


def full_memory(size: int, pool: list[str], seed: int) -> ReflectionMemory:
    """`size` distinct reflections under FrozenLake's one key, each stored for one of the queries."""
    rng = random.Random(seed)
    memory = ReflectionMemory(max_size=size, top_k=1)
    for i in range(size):
        text = f"reflection {i}: " + " ".join(rng.choice(WORDS) for _ in range(20))
        memory.add(text, "frozenlake", rng.random(), step=i // 32, query=rng.choice(pool))
    return memory


def wave(memory: ReflectionMemory, asks: list[str], again: bool) -> tuple[float, list[list[str]]]:
    """Seconds for one retrieval per ask, and what each returned; `again`: ranked anew every time."""
    got = []
    start = time.perf_counter()
    for query in asks:
        if again:
            memory._chosen.clear()
        got.append([e.text for e in memory.retrieve("frozenlake", query)])
    return time.perf_counter() - start, got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--n", type=int, default=8, help="episodes a task (retrievals of each query)")
    p.add_argument("--size", type=int, default=256, help="entries in the memory")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    pool = queries(args.tasks, seed=0)
    asks = [q for q in pool for _ in range(args.n)]
    random.Random(1).shuffle(asks)  # episodes reach their reflections in no task order
    times: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for _ in range(args.repeats):
        for again in (True, False):
            memory = full_memory(args.size, pool, seed=2)
            secs, results[again] = wave(memory, asks, again)
            times[again].append(secs)
    assert results[True] == results[False], "a kept ranking returned other entries than ranking anew"
    anew, kept = (statistics.median(times[a]) for a in (True, False))
    print(f"{len(asks)} retrievals ({args.tasks} tasks x {args.n}) from a memory of {args.size}, median of "
          f"{args.repeats}:")
    print(f"  ranked anew each time: {anew:.4f} s ({1e3 * anew / len(asks):.3f} ms a retrieval)")
    print(f"  ranking kept per task: {kept:.4f} s ({1e3 * kept / len(asks):.3f} ms a retrieval)")
    print(f"ratio anew / kept: {anew / kept:.2f} (the same entries returned)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
