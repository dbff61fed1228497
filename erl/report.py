"""Learning curves over seeds from finished run folders: the tables and plots of
docs/results.md (`erl-report`).

A run folder is what a trainer writes:
  local trainer (erl-train): config.json (the resolved config) + metrics.jsonl
  verl trainer (erl-verl):   config.yaml (the resolved Hydra config, with an `erl_trainer:`
                             section) + the file named by erl_trainer.metrics_file
The curve is `eval/success` (greedy first attempt on held-out tasks: no reflection, no
memory) by step and by training minutes (the sum of `time/step`; evaluation is not in it).
Runs are grouped by (env, method, trainer); seeds of a group are aligned on the eval steps
they all logged.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from erl.core.config import MODES, ErlConfig
from erl.models.warmstart import FINAL
from erl.tracking import read_metrics

# ERL_SPEC section 5: the paper's final eval success, RLVR -> ERL, read from its figures
# (8 GPUs, verl 0.6.1); the second digit is approximate.
PAPER_MODELS = ("Qwen3-4B-Instruct", "Olmo-3-7B-Instruct")
PAPER = {
    "sokoban": {"rlvr": (0.06, 0.04), "erl": (0.87, 0.20)},
    "frozenlake": {"rlvr": (0.86, 0.39), "erl": (0.94, 0.66)},
    "hotpotqa": {"rlvr": (0.45, 0.47), "erl": (0.56, 0.50)},
}
# one colour per method in every figure; the verl trainer's runs dashed, a warm start dash-dotted (dotted on verl)
COLOURS = {"erl": "tab:blue", "rlvr": "tab:orange", "no_reflection": "tab:green", "no_memory": "tab:red"}
OTHER_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
# the curve's metric per env where it is not `eval/success`: the paper scores HotpotQA by its reward
EVAL_METRIC = {"hotpotqa": "eval/reward"}
METRIC_NOTE = {"hotpotqa": ("the curve here is `eval/reward`, the paper's HotpotQA metric: 1 for an exact match, "
                            "else the answer's F1 when it is at least 0.3, else 0")}

TOL = 1e-9  # "reached": a mean of eval fractions equal to the target up to float rounding


def eval_metric(env: str) -> str:
    return EVAL_METRIC.get(env, "eval/success")


DEFINITIONS = """\
- **eval success**: `eval/success`, greedy first attempt on the held-out tasks (no reflection, no memory),
  averaged over seeds at each eval step that every seed of the method logged.
- **spread**: ± is the sample standard deviation over seeds (n - 1; n/a for one seed); (min-max) the lowest
  and the highest seed; the plots shade min-max.
- **training minutes**: cumulative `time/step` (rollout + update, + weight sync on verl); evaluation time is
  **not** included; averaged over seeds.
- **steps / minutes to RLVR's final level**: the first eval step where the method's mean curve is at or above
  RLVR's mean final eval success (same env and trainer); `not reached` when it never is.
- **best**: the highest point of the mean curve."""


class ReportError(ValueError):
    """Input the report cannot use; the CLI prints it on one line and exits 2."""


@dataclass
class Run:
    folder: Path
    config_file: Path
    metrics_file: Path
    trainer: str  # local | verl
    env: str
    method: str  # erl.mode; a value outside MODES is kept as its own method
    seed: object
    model: str
    evals: dict[int, float]  # step -> eval/success (EVAL_METRIC where the env has one)
    minutes: dict[int, float]  # step -> training minutes done by then
    last_step: int
    train_success: dict[int, float]  # step -> attempt1/success of the training rollouts
    start: str = ""  # what the run starts from or plays that others may not: a warm start, strict action tags


@dataclass
class Group:
    env: str
    method: str
    trainer: str
    runs: list[Run]
    start: str = ""
    steps: list[int] = field(default_factory=list)  # eval steps every run with evals logged
    mean: np.ndarray = None
    std: np.ndarray = None  # sample std over seeds (n - 1); nan for one seed
    lo: np.ndarray = None
    hi: np.ndarray = None
    minutes: np.ndarray = None  # mean training minutes at each of `steps`
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        label = self.method if self.trainer == "local" else f"{self.method} (verl)"
        return f"{label} [{self.start}]" if self.start else label

    @property
    def final(self) -> float:
        return float(self.mean[-1]) if self.steps else float("nan")


def training_minutes(rows: list[dict]) -> dict[int, float]:
    """Minutes of training done by the end of each step: the sum of `time/step` (rollout +
    update, + weight sync on verl); evaluation is not timed into it on either trainer."""
    total, out = 0.0, {0: 0.0}
    for r in rows:
        if "time/step" in r:
            total += r["time/step"]
            out[r["step"]] = total / 60
    return out


def _get(cfg: dict, keys: str, file: Path):
    node = cfg
    for k in keys.split("."):
        if not isinstance(node, dict) or k not in node:
            raise ReportError(f"{file}: no `{keys}` (not a config an erl trainer wrote)")
        node = node[k]
    return node


def describe(folder: Path) -> tuple[str, Path, Path, dict] | None:
    """(trainer, config file, metrics file, config) of a run folder; None when the folder holds
    no metrics file next to a config (model folders and checkpoints also hold config.json)."""
    yml, js = folder / "config.yaml", folder / "config.json"
    if yml.is_file():
        import yaml

        cfg = yaml.safe_load(yml.read_text()) or {}
        if isinstance(cfg, dict) and "erl_trainer" in cfg:
            metrics = folder / str(cfg["erl_trainer"].get("metrics_file") or "metrics.jsonl")
            return ("verl", yml, metrics, cfg) if metrics.is_file() else None
    if js.is_file() and (folder / "metrics.jsonl").is_file():
        try:
            cfg = json.loads(js.read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{js}: not JSON ({exc.msg})") from None
        if _stage_config(cfg):
            return None  # an Early Experience stage (erl-early train): SFT, not an RL run
        return "local", js, folder / "metrics.jsonl", cfg
    return None


def run_start(cfg: dict) -> str:
    """A warm start (model.init_from: "from il" for an Early Experience stage's folder; on verl,
    whose model path is the stage's final/ folder itself), env.params.action_tag and a distillation
    other than the default (erl.distill_mode=raft): runs that differ in them are different
    experiments, never seeds of one."""
    parts = []
    init = (cfg.get("model") or {}).get("init_from")
    verl_model = ((cfg.get("actor_rollout_ref") or {}).get("model") or {}).get("path")
    if verl_model and Path(str(verl_model)).name == FINAL:
        init = verl_model
    if init:
        path = Path(str(init))  # a stage's output folder, or its final/ inside it
        parts.append(f"from {path.parent.name if path.name == FINAL else path.name}")
    if ((cfg.get("env") or {}).get("params") or {}).get("action_tag"):
        parts.append("action tag")
    erl = cfg.get("erl") or {}
    distill = erl.get("distill_mode", ErlConfig.distill_mode)
    if distill != ErlConfig.distill_mode and erl.get("mode") != "rlvr":  # RLVR distils nothing
        parts.append(f"distill {distill}")
    return ", ".join(parts)


def _stage_config(cfg: object) -> bool:
    return isinstance(cfg, dict) and "stage" in cfg and "erl" not in cfg


def _is_stage(folder: Path) -> bool:
    try:
        return _stage_config(json.loads((folder / "config.json").read_text()))
    except (OSError, json.JSONDecodeError):
        return False


def load_run(folder: Path, warn) -> Run | None:
    found = describe(folder)
    if found is None:
        return None
    trainer, cfg_file, metrics_file, cfg = found
    model = "actor_rollout_ref.model.path" if trainer == "verl" else "model.path"
    seed = cfg.get("erl_trainer", {}).get("seed") if trainer == "verl" else cfg.get("seed")
    try:
        rows = read_metrics(metrics_file, warn=warn)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    if any("step" not in r for r in rows):
        raise ReportError(f"{metrics_file}: a row without a `step` key")

    def curve(key: str) -> dict[int, float]:
        return {int(r["step"]): float(r[key]) for r in rows if key in r}

    env = str(_get(cfg, "env.name", cfg_file))
    return Run(folder, cfg_file, metrics_file, trainer, env, str(_get(cfg, "erl.mode", cfg_file)), seed,
               str(_get(cfg, model, cfg_file)), curve(eval_metric(env)), training_minutes(rows),
               max((int(r["step"]) for r in rows), default=0), curve("attempt1/success"), run_start(cfg))


def find_runs(patterns: list[str], warn) -> list[Run]:
    """Run folders under every argument (a folder, a file in one, or a glob), recursively."""
    folders: set[Path] = set()
    for pat in patterns:
        magic = any(c in pat for c in "*?[")
        hits = glob.glob(pat, recursive=True) if magic else [pat] if os.path.exists(pat) else []
        if not hits:
            raise ReportError(f"{pat!r} matches no file or folder")
        for hit in map(Path, hits):
            root = hit if hit.is_dir() else hit.parent
            # resolved: one folder reached through two arguments is one run, not two seeds
            folders |= {p.parent.resolve() for name in ("config.json", "config.yaml", "*.jsonl") for p in root.rglob(name)}
    runs = []
    for folder in sorted(folders):
        run = load_run(folder, warn)
        if run is not None:
            runs.append(run)
        elif (folder / "metrics.jsonl").is_file() and not _is_stage(folder):
            warn(f"{folder}: metrics.jsonl without a trainer's config.json / config.yaml, skipped")
    if not runs:
        raise ReportError(f"no run folders (config.json or config.yaml next to metrics.jsonl) under {' '.join(patterns)}")
    return runs


def aggregate(env: str, method: str, trainer: str, runs: list[Run], start: str = "") -> Group:
    by_seed = sorted(runs, key=lambda r: (0, r.seed, "") if isinstance(r.seed, int) else (1, 0, str(r.seed)))
    g = Group(env, method, trainer, by_seed, start=start)
    with_evals = [r for r in g.runs if r.evals]
    for r in g.runs:
        if not r.evals:
            g.notes.append(f"`{r.metrics_file}` has no eval rows: left out of the curves and numbers")
    if not with_evals:
        g.mean = g.std = g.lo = g.hi = g.minutes = np.zeros(0)
        return g
    g.steps = sorted(set.intersection(*(set(r.evals) for r in with_evals)))
    if any(set(r.evals) != set(g.steps) for r in with_evals):
        lasts = ", ".join(str(max(r.evals)) for r in with_evals)
        g.notes.append(f"seeds logged eval up to steps {lasts}: aligned on the {len(g.steps)} eval steps all share"
                       + (f" (last: {g.steps[-1]})" if g.steps else " (none: no curve)"))
    vals = np.array([[r.evals[s] for s in g.steps] for r in with_evals]).reshape(len(with_evals), len(g.steps))
    g.mean, g.lo, g.hi = vals.mean(0), vals.min(0), vals.max(0)
    g.std = vals.std(0, ddof=1) if len(with_evals) > 1 else np.full(len(g.steps), np.nan)
    g.minutes = np.array([[r.minutes.get(s, np.nan) for s in g.steps] for r in with_evals]).reshape(vals.shape).mean(0)
    seeds = [str(r.seed) for r in g.runs]
    if len(set(seeds)) < len(seeds):
        g.notes.append(f"seeds repeat ({', '.join(seeds)}): some runs may be copies of one another")
    models = sorted({r.model for r in g.runs})
    if len(models) > 1:
        g.notes.append(f"runs of different models are averaged together: {', '.join(models)}")
    return g


def method_order(method: str) -> tuple:
    return (MODES.index(method), "") if method in MODES else (len(MODES), method)


def group_runs(runs: list[Run]) -> dict[str, list[Group]]:
    """env -> its groups: by trainer, then start (plain first), known methods in MODES order, then
    the others by name."""
    keys = sorted({(r.env, r.trainer, r.start, r.method) for r in runs},
                  key=lambda k: (k[0], k[1], k[2], method_order(k[3])))
    out: dict[str, list[Group]] = {}
    for env, trainer, start, method in keys:
        members = [r for r in runs if (r.env, r.trainer, r.start, r.method) == (env, trainer, start, method)]
        out.setdefault(env, []).append(aggregate(env, method, trainer, members, start))
    return out


def first_reach(g: Group, target: float) -> int | None:
    """Index of the first eval step where the mean curve is at or above `target`."""
    return next((i for i, m in enumerate(g.mean) if m >= target - TOL), None)


def _f(x: float) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{x:.3f}"


def _span(values: list) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def env_table(groups: list[Group]) -> list[str]:
    rlvr = {(g.trainer, g.start): g for g in groups if g.method == "rlvr" and g.steps}  # the same experiment's
    what = eval_metric(groups[0].env if groups else "").split("/")[-1]
    lines = [(f"| method | seeds | final eval {what}: mean ± std (min-max) [step] | best of the mean curve [step] | "
              "steps to RLVR's final level | training minutes to it | total steps | training minutes in all |"),
             "|---|---|---|---|---|---|---|---|"]
    for g in groups:
        seeds = f"{len(g.runs)} ({', '.join(str(r.seed) for r in g.runs)})"
        total_min = float(np.mean([max(r.minutes.values()) for r in g.runs]))
        if not g.steps:
            lines.append(f"| {g.label} | {seeds} | no eval | - | - | - | {_span([r.last_step for r in g.runs])} | "
                         f"{total_min:.1f} |")
            continue
        final = f"{g.final:.3f} ± {_f(g.std[-1])} ({g.lo[-1]:.3f}-{g.hi[-1]:.3f}) [{g.steps[-1]}]"
        b = int(np.argmax(g.mean))
        base = rlvr.get((g.trainer, g.start))
        if base is None:
            reach = reach_min = "n/a (no rlvr runs)"
        else:
            i = first_reach(g, base.final)
            reach = "not reached" if i is None else str(g.steps[i])
            reach_min = "not reached" if i is None else f"{g.minutes[i]:.1f}"
        lines.append(f"| {g.label} | {seeds} | {final} | {g.mean[b]:.3f} [{g.steps[b]}] | {reach} | {reach_min} | "
                     f"{_span([r.last_step for r in g.runs])} | {total_min:.1f} |")
    return lines


def paper_table(env: str, groups: list[Group]) -> list[str]:
    models = sorted({r.model for g in groups for r in g.runs})
    lines = [(f"The paper's numbers, **not from these runs**: final {eval_metric(env).replace('/', ' ')} read from the paper's figures "
              "(8 GPUs, verl 0.6.1; the second digit is approximate). These runs used "
              f"{', '.join(f'`{m}`' for m in models)}: a different model scale unless it is one of the paper's, so "
              "compare the direction and size of the ERL - RLVR gap, not the values."),
             "", f"| method | these runs: final mean | paper, {PAPER_MODELS[0]} | paper, {PAPER_MODELS[1]} |",
             "|---|---|---|---|"]
    for method in ("rlvr", "erl"):
        paper = f"{PAPER[env][method][0]:.2f} | {PAPER[env][method][1]:.2f}"
        ours = [g for g in groups if g.method == method]
        lines += [f"| {g.label} | {_f(g.final)} | {paper} |" for g in ours] or [f"| {method} | not run | {paper} |"]
    return lines


def colour(method: str, seen: dict[str, str]) -> str:
    if method in COLOURS:
        return COLOURS[method]
    return seen.setdefault(method, OTHER_COLOURS[len(seen) % len(OTHER_COLOURS)])


def plot_env(groups: list[Group], out_png: Path, title: str, train_panel: bool = False) -> Path:
    """Mean eval success over seeds by step and by training minutes, the band min-max; with
    `train_panel`, a third panel of each run's training first-attempt success (erl-compare)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if train_panel else 2, figsize=(17 if train_panel else 12, 4.2))
    others: dict[str, str] = {}
    marks: dict[str, str] = {}  # one marker per warm start: colour and line style alone repeat
    for g in groups:
        c, ls = colour(g.method, others), ("-", "--", "-.", ":")[(g.trainer != "local") + 2 * bool(g.start)]
        mark = marks.setdefault(g.start, "osD^vPX*"[len(marks) % 8])
        n = len([r for r in g.runs if r.evals])
        label = f"{g.label} ({n} seed{'s' if n > 1 else ''})"
        for ax, xs in zip(axes, (np.array(g.steps, dtype=float), g.minutes)):
            if g.steps:
                ax.plot(xs, g.mean, marker=mark, ms=3.5, color=c, ls=ls, label=label)
                ax.fill_between(xs, g.lo, g.hi, color=c, alpha=0.18, lw=0)
        for i, r in enumerate(g.runs if train_panel else []):
            steps = sorted(r.train_success)
            axes[2].plot(steps, [r.train_success[k] for k in steps], marker=".", color=c, ls=ls, alpha=0.7,
                         label=g.label if i == 0 else None)
    axes[0].set(xlabel="training step", ylabel=f"{eval_metric(groups[0].env if groups else '')} (greedy first attempt)",
                ylim=(-0.05, 1.05))
    axes[1].set(xlabel="training minutes (sum of time/step; eval excluded)", ylim=(-0.05, 1.05))
    if train_panel:
        axes[2].set(title="training rollouts: first-attempt success", xlabel="training step", ylim=(-0.05, 1.05))
    for ax in axes:
        ax.grid(alpha=0.3)
    if train_panel and axes[2].lines:
        axes[2].legend(fontsize=8)
    if axes[0].lines:  # one legend, beside the panels: inside them it hid the curves
        fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out_png


def write_report(patterns: list[str], out_md: Path, plots: Path, command: str, warn,
                 sections: list[list[str]] = ()) -> str:
    """Find, group, plot and write `out_md`, with `sections` (markdown lines each, such as the
    Early Experience tables of erl.early.report) after the environments; returns its text."""
    warnings: list[str] = []

    def note(msg: str) -> None:
        warnings.append(msg)
        warn(msg)

    runs = find_runs(patterns, note)
    envs = group_runs(runs)
    here = out_md.parent

    def rel(p: Path) -> str:
        return os.path.relpath(p, here)

    out = ["# Results: ERL vs RLVR learning curves", "",
           f"Written by `{command}` from {len(runs)} run folders.", "",
           DEFINITIONS]
    for env, groups in envs.items():
        png = plot_env(groups, plots / f"{env}_eval_success.png", f"{env}: mean over seeds, band = min-max")
        out += ["", f"## {env}", "", *([f"- **{METRIC_NOTE[env]}**", ""] if env in METRIC_NOTE else []),
                *env_table(groups)]
        notes = [f"{g.label}: {n}" for g in groups for n in g.notes]
        out += ["", *[f"- note: {n}" for n in notes]] if notes else []
        out += ["", f"![{env}: eval success by step and by training minutes]({rel(png)})", "",
                "Table and figure from:", ""]
        out += [f"- {g.label}, seed {r.seed}, model `{r.model}`: `{rel(r.metrics_file)}` (config "
                f"`{rel(r.config_file)}`)" for g in groups for r in g.runs]
        if env in PAPER:
            out += ["", *paper_table(env, groups)]
    for lines in sections:
        out += ["", *lines]
    if warnings:
        out += ["", "## Warnings while reading", "", *[f"- {w}" for w in warnings]]
    text = "\n".join(out) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    return text
