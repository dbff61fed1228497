"""ERL / RLVR step time across the runs that `local_step.py --out` / `verl_step.py --out` wrote: each
run's ratio of medians, its 90% bootstrap interval over its step pairs, and how many pairs were at
most the issue's 1.5. Runs on different machines are not pooled into one interval: a machine's speed
moves both methods, and the ratio's spread between machines is itself what "reliably" asks about.

    python benchmarks/ratio_runs.py docs/gpu/*/c*/step.json docs/gpu/*/call*/step.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verl_step import TARGET, at_most_target, pair_ratios, ratio_interval


def run_row(path: Path) -> dict:
    """One run's figures from its JSON (the per_step lists that side_by_side writes)."""
    res = json.loads(path.read_text())
    per_step = res.get("per_step", {})
    erl = [m["time/step"] for m in per_step.get("erl", [])]
    rlvr = [m["time/step"] for m in per_step.get("rlvr", [])]
    if not erl or len(erl) != len(rlvr):
        raise ValueError(f"{path}: no per-step times of both methods (per_step.erl / per_step.rlvr)")
    pairs = pair_ratios(erl, rlvr)
    low, high = ratio_interval(erl, rlvr)
    return {"run": str(path), "steps": len(pairs), "ratio": res["ratio/step_time"], "low": low, "high": high,
            "under": at_most_target(pairs)}


def table(rows: list[dict]) -> str:
    lines = [f"{'run':58s} {'steps':>5s} {'ERL/RLVR':>9s} {'90% interval':>14s} {'pairs <= ' + str(TARGET):>13s}"]
    for r in rows:
        lines.append(f"{r['run'][-58:]:58s} {r['steps']:5d} {r['ratio']:9.3f} {r['low']:6.3f}-{r['high']:<7.3f}"
                     f" {r['under']:>6d} of {r['steps']:<3d}")
    met = sum(r["high"] <= TARGET for r in rows)
    lines.append(f"runs whose interval lies at or under {TARGET}: {met} of {len(rows)}; "
                 f"whose median does: {sum(r['ratio'] <= TARGET for r in rows)} of {len(rows)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="JSON files written by local_step.py / verl_step.py --out")
    args = p.parse_args(argv)
    try:
        rows = [run_row(path) for path in args.runs]
    except (OSError, ValueError, KeyError) as exc:
        p.error(str(exc))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
