"""Metrics sinks: JSONL (the source of truth), tensorboard, wandb, console; and PNG plots."""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

from erl.fileio import atomic_write, write_file

SAMPLES_FILE = "samples.jsonl"


def samples_path(metrics_path: Path) -> Path:
    """Where a run's episodes as text go: beside its metrics file (resume truncates and archives both)."""
    return Path(metrics_path).with_name(SAMPLES_FILE)


SEGMENT_CURVES = [("attempt1/success", "attempt 1"), ("attempt2/success", "attempt 2 (after reflection)"),
                  ("reflection/reward", "reflection reward"), ("eval/success", "eval: first attempt only")]


class Tracker:
    """A run's metrics: appended to `<out_dir>/<filename>` (what plots and resumes read), sent to
    TensorBoard / wandb when `loggers` names them and to each of `sinks` (objects with
    `log(data=, step=)`, such as verl's Tracking), and drawn into `<out_dir>/curves.png` after
    every step when `title` is given. `purge_step`: the first step a resumed run logs;
    TensorBoard hides the interrupted run's points from there on (it would otherwise draw both
    timelines over each other)."""

    def __init__(self, out_dir: Path, loggers: list[str], config: dict | None = None, project: str = "erl",
                 purge_step: int | None = None, filename: str = "metrics.jsonl", title: str | None = None,
                 sinks: tuple | list = ()):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / filename
        self.samples_path = samples_path(self.path)  # a few episodes a step, as text (log_samples)
        self.title, self.sinks = title, list(sinks)
        self.loggers = list(loggers)
        self._tb = self._wandb = None
        if "tensorboard" in self.loggers:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge_step)
        if "wandb" in self.loggers:
            import wandb  # optional extra: pip install erl[wandb]

            self._wandb = wandb.init(project=project, config=config, dir=str(self.out_dir))

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines the interrupted run wrote after its last checkpoint (and a line
        torn by the kill). Written new, then renamed over: a crash here loses nothing."""
        for path in (self.path, self.samples_path):
            if path.is_file():
                keep = [r for r in read_metrics(path) if r["step"] <= step]
                atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))

    def log_samples(self, step: int, records: list[dict]) -> None:
        """Episodes as text, one JSON line each with its step: one append + fsync per step."""
        if records:
            lines = "".join(json.dumps({"step": step, **r}) + "\n" for r in records)
            write_file(self.samples_path, lines.encode(), append=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        # one append + fsync per step: a kill leaves at most one torn last line, which readers drop
        write_file(self.path, (json.dumps({"step": step, **clean}) + "\n").encode(), append=True)
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(clean, step=step)
        for sink in self.sinks:
            sink.log(data=clean, step=step)
        if self.title is not None:  # a look at the run while it trains
            plot_run(self.path, self.out_dir / "curves.png", title=self.title)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path, warn: Callable[[str], None] | None = None) -> list[dict]:
    """The rows of a metrics.jsonl ([] when it does not exist). A last line that is not JSON is
    a write cut short (a killed run, or a reader racing the writer): it is skipped and reported
    through `warn`. A bad line before the last is corruption, not a torn write: ValueError."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(i, ln) for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip()]
    rows = []
    for k, (i, ln) in enumerate(lines):
        try:
            row = json.loads(ln)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            if k < len(lines) - 1:
                raise ValueError(f"{path}:{i} is not a metrics line; only the last line may be torn by a crash, "
                                 "so the file was damaged otherwise")
            (warn or warnings.warn)(f"{path}:{i}: the last line is not complete JSON (a torn write), skipped")
            break
        rows.append(row)
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(metrics_path: Path, out_png: Path, title: str = "") -> Path:
    """Success per segment over steps, and first-attempt eval success."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_metrics(metrics_path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in SEGMENT_CURVES[:3]:
        xs, ys = _series(rows, key)
        if xs:
            # a binary reward makes the reflections' reward the second attempts' success wherever every
            # reflection parsed: dashed, with hollow markers, so that the line under it stays visible
            style = {"linestyle": "--", "marker": "o", "fillstyle": "none"} if key == "reflection/reward" else {"marker": "."}
            axes[0].plot(xs, ys, label=label, **style)
    axes[0].set(title="training rollouts", xlabel="step", ylabel="success / reward", ylim=(-0.05, 1.05))
    if axes[0].lines:  # before the first step (eval only) there is nothing to label
        axes[0].legend(fontsize=8)
    xs, ys = _series(rows, "eval/success")
    if xs:
        axes[1].plot(xs, ys, marker="o", color="black")
    axes[1].set(title="eval: first attempt, no reflection, no memory", xlabel="step", ylabel="success",
                ylim=(-0.05, 1.05))
    for ax in axes:  # steps are whole numbers (a short run's axis had shown 1.25, 1.75)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic_write(out_png, buf.getvalue())  # a kill mid-plot must not leave a broken image
    return out_png


# Metrics that a resumed run must reproduce exactly (they count sampled tokens and outcomes:
# any difference means the rollouts differed), and metrics allowed a small relative gap
# (losses and log-prob statistics, where GPU reductions are not bitwise reproducible).
EXACT_PREFIXES = ("tokens/", "rows", "attempt", "reflection/", "episode/", "memory/", "distill/", "eval/success",
                  "rollout/sequences")
SKIP_PREFIXES = ("time/", "throughput/", "system/", "perf/", "actor/perf/", "actor/mfu",
                 # what the process's caches lacked (CUDA graphs, compiled shapes), not what was sampled:
                 # a resumed process records every shape of its first step again
                 "rollout/graphs_recorded", "rollout/recompiles", "rollout/decode_shapes")
# Metrics of the eval that runs after the step's update: a GPU update is not bitwise reproducible
# (the resumed and control runs' gradient norms differ in the sixth digit), and a greedy eval of
# the slightly different weights may take another turn on a grid. Where the control run shows
# such a spread (resumed != control), a gap to the original is the machine's, whatever its size.
AFTER_UPDATE_PREFIXES = ("eval/",)


def _row(rows: list[dict], step: int) -> dict | None:
    return next((r for r in rows if r.get("step") == step), None)


def compare_step(a: list[dict], b: list[dict], step: int, rel_tol: float = 1e-2,
                 control: list[dict] | None = None) -> tuple[str, list[str]]:
    """Compare one step's metrics of an uninterrupted run `a` and a resumed run `b`.

    Counts and outcomes (EXACT_PREFIXES) must be equal, other numbers within `rel_tol`
    relative (abs 1e-6 floor); timings are ignored. `control` is a second run resumed from
    the same checkpoint as `b`: the gap |b - control| is what the machine alone produces from
    identical state (GPU kernels are not bitwise reproducible run to run), so a metric that
    fails the strict check still passes as noise when |a - b| <= 2 |b - control| (one noise
    sample against another, hence the factor). Returns ("exact" | "noise" | "differs", report)."""
    ra, rb, rc = _row(a, step), _row(b, step), _row(control, step) if control is not None else None
    if ra is None or rb is None or (control is not None and rc is None):
        which = "original" if ra is None else "resumed" if rb is None else "control"
        return "differs", [f"step {step} missing from the {which} run"]
    head = f"{'metric (step ' + str(step) + ')':36s} {'original':>12s} {'resumed':>12s}"
    lines = [head + (f" {'control':>12s}" if rc is not None else "") + "  check"]
    verdicts = []
    for key in sorted(set(ra) | set(rb)):
        if key == "step" or key.startswith(SKIP_PREFIXES):
            continue
        va, vb = ra.get(key), rb.get(key)
        vc = rc.get(key) if rc is not None else None
        ctl = f" {vc:12.5g}" if isinstance(vc, (int, float)) else (f" {'-':>12s}" if rc is not None else "")
        if va is None or vb is None:
            verdicts.append("differs")
            lines.append(f"{key:36s} {va!s:>12s} {vb!s:>12s}{ctl}  MISSING")
            continue
        exact = key.startswith(EXACT_PREFIXES)
        strict = va == vb if exact else abs(va - vb) <= max(rel_tol * max(abs(va), abs(vb)), 1e-6)
        verdict = "exact" if strict else "differs"
        if not strict and isinstance(vc, (int, float)) and vb != vc and (
                abs(va - vb) <= 2 * abs(vb - vc) or key.startswith(AFTER_UPDATE_PREFIXES)):
            verdict = "noise"
        verdicts.append(verdict)
        label = {"exact": "ok", "noise": "within noise", "differs": "DIFFERS"}[verdict]
        lines.append(f"{key:36s} {va:12.5g} {vb:12.5g}{ctl}  {('exact ' if exact else 'close ') + label}")
    overall = "differs" if "differs" in verdicts else "noise" if "noise" in verdicts else "exact"
    return overall, lines


VERDICTS = {"exact": "REPRODUCED", "noise": "REPRODUCED within run-to-run noise", "differs": "NOT reproduced"}


def main(argv: list[str] | None = None) -> int:
    """`python -m erl.tracking ORIGINAL.jsonl RESUMED.jsonl --step K [--control C.jsonl]`, or
    `--check-dir DIR --step K` (a resume check's folder: DIR/{original,resumed}/metrics.jsonl, and
    DIR/control/metrics.jsonl where that run was made): exit 0 when step K is reproduced (exactly,
    or within the noise the control run shows; without a control every gap counts)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("original", nargs="?")
    p.add_argument("resumed", nargs="?")
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--rel-tol", type=float, default=1e-2)
    p.add_argument("--control", default=None, help="a second run resumed from the same checkpoint")
    p.add_argument("--check-dir", default=None, help="original/, resumed/ and (if made) control/ runs' folder")
    args = p.parse_args(argv)
    if args.check_dir:
        if args.original or args.resumed or args.control:
            p.error("--check-dir names the runs itself: give no metrics files with it")
        runs = Path(args.check_dir)
        args.original, args.resumed = runs / "original/metrics.jsonl", runs / "resumed/metrics.jsonl"
        args.control = runs / "control/metrics.jsonl" if (runs / "control/metrics.jsonl").is_file() else None
    elif not (args.original and args.resumed):
        p.error("give ORIGINAL and RESUMED metrics files, or --check-dir")
    control = read_metrics(args.control) if args.control else None
    verdict, lines = compare_step(read_metrics(args.original), read_metrics(args.resumed), args.step,
                                  args.rel_tol, control)
    print("\n".join(lines))
    print(f"step {args.step}: {VERDICTS[verdict]}")
    return 0 if verdict != "differs" else 1


if __name__ == "__main__":
    raise SystemExit(main())
