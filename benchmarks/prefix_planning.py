"""Admission planning on the host: which slot and which lent KV each admitted prompt gets
(erl.rollout.prefix), at the GPU preset's scale, for this tree and for an earlier commit's
prefix.py, side by side on the same synthetic admissions. Also checks that both plan alike.

    PYTHONPATH=. python benchmarks/prefix_planning.py                 # against 49f9bc9
    PYTHONPATH=. python benchmarks/prefix_planning.py --base HEAD~3 --slots 1024 --admitted 400

The admissions look like an ERL collect's at 64 tasks x 8 (docs/gpu/host_planning): a shared
system prompt, 64 task grids, 1,024 slots holding earlier turns of the episodes (a task's
samples alike), and prompts that are next turns (their own slot's sequence plus an
observation), second attempts and the n equal first prompts of a task.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types

import numpy as np

from erl.rollout import prefix as current


def load_base(rev: str) -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{rev}:erl/rollout/prefix.py"], capture_output=True, text=True, check=False)
    if src.returncode:
        raise SystemExit(f"--base {rev}: {src.stderr.strip()} (run from a git checkout)")
    module = types.ModuleType(f"prefix_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(src.stdout, f"{rev}:erl/rollout/prefix.py", "exec"), module.__dict__)  # noqa: S102 -- our own file
    return module


def admission(rng: np.random.Generator, slots: int, admitted: int, tasks: int = 64, vocab: int = 49152):
    """(tok, held, [(slot, own reuse, prompt)]) of one admission. A task's samples act alike (a
    small model's replies repeat), so its slots share long histories, and a tenth of the slots
    hold another system prompt (a reflection's): the shape under which comparing prompt and slot
    pairs had cost the GPU collect 5.9 s where the synthetic rows of random tokens showed a gain."""
    system = rng.integers(0, vocab, 250).tolist()
    other = system[:3] + rng.integers(0, vocab, 100).tolist()
    grids = [system + rng.integers(0, vocab, 60).tolist() for _ in range(tasks)]
    histories = [rng.integers(0, vocab, 600).tolist() for _ in range(tasks)]
    cap = 1024
    tok = np.full((slots, cap), -1, dtype=np.int64)
    held = [0] * slots
    rows = []
    for s in range(slots):
        t = s % tasks
        if rng.random() < 0.05:
            rows.append([])
            continue  # holds nothing
        head = other if rng.random() < 0.1 else grids[t]
        row = (head + histories[t][:int(rng.integers(5, 500))] + rng.integers(0, vocab, 5).tolist())[:cap - 1]
        tok[s, :len(row)] = row
        held[s] = len(row)
        rows.append(row)
    free = rng.permutation(slots)[:admitted]
    out = []
    for s in free:
        kind = rng.random()
        if kind < 0.6 and rows[s]:  # the next turn of the sequence this slot holds
            out.append((int(s), len(rows[s]), (rows[s] + rng.integers(0, vocab, 30).tolist())[:cap - 2]))
        elif kind < 0.85:  # a second attempt: a task's grid and history
            t = int(rng.integers(0, tasks))
            out.append((int(s), 0, grids[t] + histories[t][:int(rng.integers(50, 300))]))
        else:  # a task's first prompt, n times
            out.append((int(s), 0, grids[int(rng.integers(0, tasks))] + [7, 8, 9]))
    return tok, held, out


def plan(module, tok, held, admitted):
    """What the engine's admission does: one scan over every slot, each prompt's slot lengths,
    then the lending plan (the admitted slots' own choice is taken as given)."""
    scan = module.PrefixScan(tok, held, np.arange(tok.shape[0]))
    if hasattr(scan, "scan"):
        scan.scan([p for _, _, p in admitted])
    lengths = [scan.lengths(p) for _, _, p in admitted]
    return lengths, module.plan_sharing(tok, held, admitted, tok.shape[1], scan)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="49f9bc9", help="the commit whose prefix.py runs beside this tree's")
    ap.add_argument("--slots", type=int, default=1024)
    ap.add_argument("--admitted", type=int, default=300, help="prompts an admission plans")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    base = load_base(args.base)
    rng = np.random.default_rng(0)
    rounds = [admission(rng, args.slots, args.admitted) for _ in range(args.rounds)]
    times, previous = {}, []
    for name, module in ((args.base, base), ("this tree", current)):
        start = time.perf_counter()
        results = [plan(module, *r) for r in rounds]
        times[name] = (time.perf_counter() - start) / len(rounds)
        print(f"{name:>10}: {1e3 * times[name]:7.1f} ms an admission of {args.admitted} prompts over "
              f"{args.slots} slots", flush=True)
        if name == "this tree":
            for (la, pa), (lb, pb) in zip(results, previous):
                assert all((a == b).all() for a, b in zip(la, lb)), "slot lengths differ"
                assert (pa.reuse, pa.lender, pa.second) == (pb.reuse, pb.lender, pb.second), "plans differ"
            print("same lengths and plans in every admission")
        previous = results
    print(f"ratio {args.base} / this tree: {times[args.base] / times['this tree']:.1f}")


if __name__ == "__main__":
    sys.exit(main())
