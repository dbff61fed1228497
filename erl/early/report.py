"""Early Experience rows for `erl-report --early DIR` and scripts/early_compare.sh: the arms'
greedy first-attempt success, read from the folder that early_compare.sh fills
(eval_<arm>.json, <stage>/metrics.jsonl), and the RL runs that scripts/early_erl.sh started from
each arm in that folder (<method>-<mode>/, or <method>-<mode>-s<seed>/ as scripts/il_tag_rl.sh names them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from erl.tracking import read_metrics

ARMS = (("base", "base model", ()), ("il", "IL", ("il",)), ("iwm-il", "IWM -> IL", ("iwm", "iwm-il")),
        ("sr", "SR", ("sr",)))
# scripts/early_erl.sh's method for each arm: its RL run is <method>-<mode>
RL_METHOD = {"base": "none", "il": "il", "iwm-il": "iwm", "sr": "sr"}
PAPER = ("The paper's claim, **not from these runs** (arXiv 2510.08558, over eight environments): "
         "IWM and SR beat IL by about 9.6 points on average, and are better starts for RL than IL.")


def rl_curve(points: list[tuple[int, float]]) -> str:
    """Every eval of a short RL run; of a long one the first, the last and the best."""
    def at(p):
        return f"{p[1]:.2f} (step {p[0]})"
    if len(points) <= 4:
        return ", ".join(at(p) for p in points)
    best = max(points, key=lambda p: (p[1], -p[0]))  # the earliest step that reached the best value
    return f"{at(points[0])} -> {at(points[-1])}, best {at(best)}"


def rl_runs(folder: Path, arm: str) -> list[tuple[str, list[dict]]]:
    """(mode, metrics) of each RL run started from `arm` in `folder` (ERL first, then RLVR), the
    seed in the mode's name where the folder carries one. Named by early_erl.sh's method, or by
    the arm (the folders of docs/gpu/early_*_tags: iwm-il-erl)."""
    found = []
    for mode in ("erl", "rlvr"):
        for prefix in dict.fromkeys((RL_METHOD[arm], arm)):
            for run in [folder / f"{prefix}-{mode}", *sorted(folder.glob(f"{prefix}-{mode}-s*"))]:
                rows = read_metrics(run / "metrics.jsonl")
                if rows:
                    found.append((run.name[len(prefix) + 1:], rows))
    return found


def arm_table(folder: Path) -> tuple[str, list[str]]:
    """(env, markdown table lines) for the arms whose eval file is in `folder`; ValueError if none is."""
    found = [(key, label, stages, folder / f"eval_{key}.json") for key, label, stages in ARMS]
    found = [f for f in found if f[3].is_file()]
    if not found:
        raise ValueError(f"{folder}: no eval_<arm>.json (scripts/early_compare.sh writes them)")
    lines = ["| arm | first-attempt success, greedy | tasks | stage steps (last loss) | RL from it: eval by step |",
             "|---|---|---|---|---|"]
    env = ""
    for key, label, stages, path in found:
        saved = json.loads(path.read_text())
        cfg_env = saved.get("config", {}).get("env", {})
        tags = ", action tags" if (cfg_env.get("params") or {}).get("action_tag") else ""
        env = env or f"{cfg_env.get('name', '')}{tags}"
        metrics = saved["metrics"]
        steps = []
        for stage in stages:
            rows = read_metrics(folder / stage / "metrics.jsonl")
            if rows:
                steps.append(f"{stage} {rows[-1]['step']} ({rows[-1].get('loss/nll', float('nan')):.3f})")
        curves = [f"{mode}: {rl_curve([(r['step'], r['eval/success']) for r in rl if 'eval/success' in r])}; "
                  f"{rl[-1]['step']} steps run" for mode, rl in rl_runs(folder, key)]
        curve = " / ".join(curves) or "-"
        lines.append(f"| {label} | {metrics['eval/success']:.3f} | {int(metrics['eval/tasks'])} | "
                     f"{', '.join(steps) or '-'} | {curve} |")
    return env, lines


def early_section(folder: Path, rel) -> list[str]:
    """The markdown section erl-report adds for one early_compare.sh folder."""
    env, table = arm_table(folder)
    manifest = None
    cfg = folder / "il" / "config.json"
    if cfg.is_file():
        data = Path(str(json.loads(cfg.read_text()).get("data", "")))
        for m in (data / "manifest.json", folder / "data" / "manifest.json"):
            if m.is_file():
                manifest = json.loads(m.read_text()).get("counts", {})
                break
    budget = (f" Expert budget: {manifest['expert_states']} expert states of {manifest['tasks']} tasks, "
              f"{manifest['rows_rollout']} alternatives ({manifest['alternatives_random']} drawn at random)."
              if manifest else "")
    intro = (f"Greedy first-attempt eval of each arm on the RL runs' held-out tasks (`{rel(folder)}`, made by "
             f"`scripts/early_compare.sh`).{budget}")
    return [f"## Early Experience warm starts: {env}", "", intro, "", *table, "", PAPER]


def main(argv: list[str] | None = None) -> int:
    """`python -m erl.early.report DIR`: print the arms' table and write it to DIR/compare.md."""
    folder = Path((argv if argv is not None else sys.argv[1:])[0])
    _, lines = arm_table(folder)
    text = "\n".join(lines) + "\n"
    (folder / "compare.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
