"""`erl-eval`: first-attempt success of a checkpoint or a model folder on a task set.

    erl-eval eval.checkpoint=outputs/frozenlake-erl/checkpoints/step_6
    erl-eval model.path=/models/Qwen3-4B-Instruct-2507 env=sokoban eval.with_reflection=true
    erl-eval eval.checkpoint=... eval.tasks_file=data/frozenlake/val.jsonl eval.out=results.json

First attempt only, no reflection, no memory: what the deployed model does, on `eval.n` tasks
(default: as many as the run evaluated on, trainer.eval_tasks, 16 in the default config). With
`eval.with_reflection=true` it also runs one reflection + second attempt where the first
failed (still no memory), which measures how much reflection still helps.
A checkpoint brings its own model, erl and env settings (the run's config.json), so with
`eval.checkpoint` a command-line override of them (`env=sokoban`, `model.path=...`, `erl.tau=...`,
`seed=...`) is refused rather than dropped: other tasks come from `eval.tasks_file`. `eval.out`
records the settings the evaluation ran with.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

EVAL_KEYS = ("checkpoint", "tasks_file", "split", "n", "temperature", "with_reflection", "out")
FROM_CHECKPOINT = ("model", "erl", "env", "seed")  # the sections a checkpoint's config.json replaces
log = logging.getLogger(__name__)


def ignored_overrides(overrides: list[str]) -> list[str]:
    """The command-line overrides a checkpoint's own settings would replace (group choices and keys
    of FROM_CHECKPOINT's sections, with or without + or ~)."""
    def section(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~").split(".", 1)[0]
    return [o for o in overrides if section(o) in FROM_CHECKPOINT]


def evaluate(cfg: dict, used: dict | None = None) -> dict[str, float]:
    """The metrics of the evaluation `cfg` asks for; `used` (when given) receives the config it ran
    with: a checkpoint's model, erl, env and seed in place of the command line's."""
    import math

    from erl.core.config import ConfigError, check_keys
    from erl.envs.base import load_tasks
    from erl.envs.registry import make_tasks
    from erl.trainers.local.checkpoint import load_checkpoint
    from erl.trainers.local.run import build
    from erl.trainers.paths import check_writable

    ev = check_keys("eval", cfg.get("eval"), EVAL_KEYS)
    n = ev.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"eval.n must be an integer >= 1 or null (all tasks), got {n!r}")
    temperature = ev.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ConfigError(f"eval.temperature must be a finite number >= 0, got {temperature!r}")
    if ev.get("out"):
        check_writable(Path(str(ev["out"])).parent, "eval.out")
    ckpt = None
    n_default = cfg["trainer"].get("eval_tasks", 16)
    if ev.get("checkpoint"):
        path = Path(str(ev["checkpoint"]))
        ckpt = load_checkpoint(path, training=False)  # weights only: the optimizer file is never opened
        saved = ckpt["config"]
        cfg = {**cfg, "model": saved["model"], "erl": saved["erl"], "env": saved["env"], "seed": saved.get("seed", 0)}
        n_default = saved.get("trainer", {}).get("eval_tasks", n_default)  # the run's own eval set
    if used is not None:
        used.update(cfg)
    # Tasks before the model: a bad or empty task file costs no model load.
    if ev.get("tasks_file"):
        tasks = load_tasks(Path(str(ev["tasks_file"])))[:n]
    else:
        env = cfg["env"]
        tasks = make_tasks(env["name"], int(n or n_default), seed=int(cfg.get("seed", 0)),
                           split=str(ev.get("split", "val")), **dict(env.get("params") or {}))
    if not tasks:  # a mean over no task would print 0.000 as if the model had failed them all
        raise ConfigError(f"eval.tasks_file: {ev['tasks_file']} holds no tasks" if ev.get("tasks_file")
                          else "eval: no tasks to evaluate")
    kinds = sorted({str(t.get("env")) for t in tasks})  # a task file's own envs, not the config's
    log.info("erl-eval: %d %s tasks (eval.n to change), %s", len(tasks), "/".join(kinds),
             "first attempt, then one reflection where it failed" if ev.get("with_reflection") else
             "first attempt only")
    cfg["trainer"] = {**cfg["trainer"], "kl_coef": 0.0}  # no reference model needed to evaluate
    trainer, _ = build(cfg)
    if ckpt is not None:
        trainer.load_state(ckpt)
    if ev.get("with_reflection", False):
        result = trainer.evaluate_with_reflection(tasks, float(temperature))
    else:
        result = trainer.evaluate(tasks, float(temperature))
    result["eval/tasks"] = float(len(tasks))
    return result


def _run(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from rich.console import Console
    from rich.table import Table

    from erl.cli.train import call_with_config

    ignored = ignored_overrides(list(HydraConfig.get().overrides.task)) if cfg.eval.get("checkpoint") else []
    if ignored:
        print(f"erl-eval: error: {' '.join(ignored)}: with eval.checkpoint the run's own model, erl, env and seed "
              f"are used (its config.json); to score other tasks pass eval.tasks_file=...", file=sys.stderr)
        sys.exit(2)
    plain: dict = {}  # the config the evaluation ran with (a checkpoint's sections in place of the command line's)
    _, result = call_with_config("erl-eval", lambda c: evaluate(c, plain), cfg)
    # the model on a line of its own: as the table's title a long checkpoint path wrapped mid-word
    print(f"erl-eval: {plain['eval'].get('checkpoint') or plain['model'].get('path')}")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:.3f}")
    Console().print(table)
    out = plain["eval"].get("out")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"config": plain, "metrics": result}, indent=1))
        print(f"erl-eval: wrote {out}")


def main() -> None:
    from erl.cli.app import hydra_app

    hydra_app("erl-eval", "eval", _run)


if __name__ == "__main__":
    main()
