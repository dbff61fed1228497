"""`erl-compare`: the paper's comparison on the local trainer — ERL vs the compute-matched
RLVR baseline (and optionally the ablations) — with one plot and one results table.

    erl-compare --out outputs/compare                       # erl vs rlvr on the defaults
    erl-compare --out outputs/sokoban --modes erl rlvr no_memory -- env=sokoban trainer.total_steps=50

Every mode runs with the same seed, tasks and overrides; RLVR samples 2n first attempts
per task where ERL samples n per attempt, so both spend the same rollouts per task.
Writes OUT/<mode>/ (each a normal erl-train run), OUT/compare.png and OUT/results.md.
One seed per call (`-- seed=1`); `erl-report OUT_s0 OUT_s1 ...` summarises several over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from erl.cli.app import compose
from erl.core.config import MODES


def summarize(label: str, rows: list[dict], wall: float) -> dict:
    evals = [r["eval/success"] for r in rows if "eval/success" in r]
    steps = [r for r in rows if "episodes" in r]

    def mean(key: str) -> float:
        return sum(r.get(key, 0.0) for r in steps) / max(len(steps), 1)

    return {"mode": label, "eval_start": evals[0] if evals else float("nan"),
            "eval_final": evals[-1] if evals else float("nan"), "eval_best": max(evals) if evals else float("nan"),
            "train_success": mean("episode/success"), "rollouts_per_step": mean("episodes") + mean("attempt2/rows"),
            "gen_tokens_per_step": mean("tokens/generated"), "sec_per_step": mean("time/step"), "wall_s": wall}


def results_table(summaries: list[dict]) -> str:
    head = ("| mode | eval success (start -> final, best) | train episode success (after attempt 2) | attempts / step | "
            "generated tokens / step | s / step | wall |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['mode']} | {s['eval_start']:.3f} -> {s['eval_final']:.3f} ({s['eval_best']:.3f}) | "
                     f"{s['train_success']:.3f} | {s['rollouts_per_step']:.1f} | {s['gen_tokens_per_step']:.0f} | "
                     f"{s['sec_per_step']:.1f} | {s['wall_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from erl.cli.app import input_errors, unknown_override_error
    from erl.progress import console_logging
    from erl.report import group_runs, load_run, plot_env
    from erl.tracking import read_metrics
    from erl.trainers.local.run import train

    p = argparse.ArgumentParser(prog="erl-compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/compare", help="output folder (one sub-folder per mode)")
    p.add_argument("--modes", nargs="+", default=["erl", "rlvr"], choices=MODES)
    p.add_argument("overrides", nargs="*", help="Hydra overrides applied to every mode (after --)")
    args = p.parse_args(argv)
    error = unknown_override_error("train", list(args.overrides))  # erl-train's check, before any mode runs
    if error:
        print(f"erl-compare: error: {error}", file=sys.stderr)
        return 2
    console_logging()
    out = Path(args.out)
    summaries, runs = [], []
    try:
        for mode in args.modes:
            cfg = compose([*args.overrides, f"erl.mode={mode}", f"trainer.output_dir={out / mode}"])
            start = time.perf_counter()
            train(cfg)
            rows = read_metrics(out / mode / "metrics.jsonl")
            summaries.append(summarize(mode, rows, time.perf_counter() - start))
            runs.append(load_run(out / mode, warn=lambda msg: print(msg, file=sys.stderr)))
    except (*input_errors(), HydraException, OmegaConfBaseException) as exc:
        # as erl-train ends on them (erl.cli.train.call_with_config), a bad group choice (env=sokobn) too
        print(f"erl-compare: error: {str(exc).strip()}", file=sys.stderr)
        return 2
    # erl-report's figure (one seed per mode here), plus the training rollouts' first attempts
    (groups,) = group_runs(runs).values()  # every mode ran on the same env
    plot_env(groups, out / "compare.png", "first-attempt eval success (no reflection, no memory)", train_panel=True)
    table = results_table(summaries)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(summaries, indent=1))
    print(table)
    print(f"erl-compare: wrote {out / 'compare.png'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
