"""Scaling efficiency of a trainer's step from one GPU to several: t1 / (N x tN), per timing.

Reads the metrics.jsonl of two runs of the same experiment and settings (one on 1 GPU, one on N),
takes the median of each timing over the same steps (the first step compiles and records graphs,
so the default skips it), and prints t1, tN, the speed-up t1 / tN and the efficiency t1 / (N tN).
An efficiency of 1 is linear scaling. Optionally draws the per-step times of both runs.

    python benchmarks/verl_scaling.py --one t1_erl/metrics.jsonl --many erl2/metrics.jsonl --gpus 2 \
        --steps 2-6 [--png scaling.png]

Made for issue 11's two-GPU part (docs/gpu/gpu2_scaling: scripts/frozenlake_{erl,rlvr}.sh).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from erl.tracking import read_metrics

TIMINGS = ("time/step", "time/rollout", "time/update")


def step_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    first, last = int(lo), int(hi or lo)
    if first < 1 or last < first:
        raise argparse.ArgumentTypeError(f"--steps wants FIRST-LAST with 1 <= FIRST <= LAST, got {text!r}")
    return first, last


def medians(rows: list[dict], steps: tuple[int, int]) -> dict[str, float]:
    """Median of each timing over the training rows whose step lies in `steps` (inclusive)."""
    picked = [r for r in rows if steps[0] <= r.get("step", 0) <= steps[1] and "time/step" in r]
    if not picked:
        raise ValueError(f"no training step in {steps[0]}-{steps[1]}")
    return {k: statistics.median(r[k] for r in picked) for k in TIMINGS if all(k in r for r in picked)}


def scaling(one: dict[str, float], many: dict[str, float], gpus: int) -> dict[str, tuple[float, float, float, float]]:
    """timing -> (t1, tN, speed-up t1 / tN, efficiency t1 / (N tN))."""
    return {k: (one[k], many[k], one[k] / many[k], one[k] / (gpus * many[k])) for k in one if k in many}


def plot(one: list[dict], many: list[dict], gpus: int, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TIMINGS), figsize=(4 * len(TIMINGS), 3.2), sharex=True)
    for ax, key in zip(axes, TIMINGS):
        for rows, label in ((one, "1 GPU"), (many, f"{gpus} GPUs")):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.set_ylabel("s")
        ax.set_ylim(bottom=0)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", required=True, type=Path, help="metrics.jsonl of the 1-GPU run")
    p.add_argument("--many", required=True, type=Path, help="metrics.jsonl of the N-GPU run")
    p.add_argument("--gpus", type=int, default=2, help="N")
    p.add_argument("--steps", type=step_range, default=(2, 6), help="FIRST-LAST steps to take medians over")
    p.add_argument("--png", type=Path, help="draw both runs' step, rollout and update times here")
    a = p.parse_args(argv)
    if a.gpus < 2:
        p.error("--gpus must be at least 2")
    one, many = read_metrics(a.one), read_metrics(a.many)
    table = scaling(medians(one, a.steps), medians(many, a.steps), a.gpus)
    print(f"medians over steps {a.steps[0]}-{a.steps[1]}: {a.one} (1 GPU) vs {a.many} ({a.gpus} GPUs)")
    print(f"{'timing':<14}{'t1 (s)':>9}{'tN (s)':>9}{'t1/tN':>8}{'t1/(N tN)':>11}")
    for key, (t1, tn, speed, eff) in table.items():
        print(f"{key:<14}{t1:>9.2f}{tn:>9.2f}{speed:>8.2f}{eff:>11.3f}")
    if a.png:
        print(f"wrote {plot(one, many, a.gpus, a.png)}")


if __name__ == "__main__":
    main()
