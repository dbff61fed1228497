"""What a settled heap keeps (erl.trainers.heap.settled_heap): the local trainer's steps, each
settling its heap as `fit` does, and after each step one full collection of everything (thawed,
collected, frozen again). The objects that collection finds unreachable are the cyclic garbage
that formed among frozen objects during the step, which the settled heap alone would keep until
the loop ends; the frozen count shows whether the survivors keep growing.

    PYTHONPATH=. python benchmarks/heap_retention.py                              # tiny model, 24 steps
    PYTHONPATH=. python benchmarks/heap_retention.py --steps 40 --set erl.memory_size=8
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_step import local_trainer

from erl.trainers.heap import settled_heap


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--mode", default="erl")
    p.add_argument("--set", action="append", default=[], help="an erl-train override (repeatable)")
    args = p.parse_args(argv)
    sets = ["model=tiny", "trainer.tasks_per_step=16", "erl.n_attempt=4", *args.set]
    found_total = 0
    with tempfile.TemporaryDirectory() as tmp:
        trainer = local_trainer(sets, args.mode, Path(tmp))
        print(f"local trainer, {args.mode}, {' '.join(sets)}: {args.steps} steps", flush=True)
        with settled_heap(trainer):
            for i in range(args.steps):
                start = time.perf_counter()
                m = trainer.step()
                frozen = gc.get_freeze_count()
                gc.unfreeze()
                found = gc.collect()  # with the thawed heap: what the frozen one would have kept
                gc.freeze()
                found_total += found
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
                print(f"step {i + 1:3d}: {time.perf_counter() - start:5.1f} s | frozen {frozen:,} | unreachable "
                      f"among them {found} | settle {m.get('perf/gc_settle_seconds', 0.0):.3f} s | memory "
                      f"{m.get('memory/size', 0.0):.0f} | peak rss {rss:.2f} GB", flush=True)
    print(f"unreachable objects a settled heap would have kept over {args.steps} steps: {found_total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
