"""`erl-tasks`: write task files, and show what the model sees of them.

    erl-tasks write frozenlake --n-train 256 --n-val 64 --seed 0 --out data/frozenlake
    erl-tasks write sokoban --out data/sokoban --param size_max=7 --param symbols.wall=%
    erl-tasks show data/frozenlake/val.jsonl --n 2

`write` makes OUT/train.jsonl and OUT/val.jsonl (disjoint layouts, reproducible from the seed): the
tasks `erl-train env=ENV` makes (its env section's params, task counts and seed: configs/local/env/),
unless --param, --n-train, --n-val or --seed say otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

import yaml

from erl.core.config import ConfigError


def parse_param(item: str) -> tuple[list[str], object]:
    """"a.b=value" -> (["a", "b"], value). Values are YAML scalars (3, 0.2, true), except
    symbols, which stay the literal character (YAML would read "#" as a comment)."""
    key, sep, raw = item.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not sep or not path:
        raise ConfigError(f"--param must look like key=value (e.g. size_max=5), got {item!r}")
    if path[0] == "symbols":
        return path, raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return path, raw if value is None else value


def parse_params(items: list[str]) -> dict:
    params: dict = {}
    for item in items:
        path, value = parse_param(item)
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--param {item!r}: {part!r} is already set to a value")
        node[path[-1]] = value
    return params


def summarize(tasks: list[dict]) -> str:
    sizes = Counter(t.get("size") for t in tasks if "size" in t)
    lengths = [len(t["solution"]) for t in tasks if isinstance(t.get("solution"), list)]
    parts = [f"{len(tasks)} tasks"]
    if sizes:
        parts.append("sizes " + ", ".join(f"{k}: {v}" for k, v in sorted(sizes.items())))
    if lengths:
        parts.append(f"shortest solution {min(lengths)}..{max(lengths)} moves "
                     f"(mean {statistics.mean(lengths):.2f})")
    return "; ".join(parts)


def train_env(env: str) -> tuple[dict, int]:
    """(env section, seed) of erl-train's composed config with `env=ENV`, so that a written file holds
    the tasks of its runs; ({name: ENV}, 0) for an env without a file in configs/local/env/ (its
    class's defaults)."""
    from hydra.errors import HydraException

    from erl.cli.app import compose

    try:
        cfg = compose([f"env={env}"])
    except HydraException:
        return {"name": env}, 0
    return cfg["env"], int(cfg.get("seed", 0))


def cmd_write(args: argparse.Namespace) -> None:
    from erl.envs.base import write_tasks
    from erl.envs.registry import make_tasks, validate_env_params

    section, seed = train_env(args.env)
    params = {**(section.get("params") or {}), **parse_params(args.param)}
    validate_env_params(args.env, params)
    seed = seed if args.seed is None else args.seed
    out = Path(args.out)
    counts = {"train": section.get("n_train", 256) if args.n_train is None else args.n_train,
              "val": section.get("n_val", 64) if args.n_val is None else args.n_val}
    for split, n in counts.items():
        tasks = make_tasks(args.env, n, seed=seed, split=split, **params)
        path = out / f"{split}.jsonl"
        write_tasks(path, tasks)
        print(f"{path}: {summarize(tasks)}")
    print(f"erl-tasks: {args.env} seed={seed} params={params or '{}'}")


def cmd_show(args: argparse.Namespace) -> None:
    from erl.envs.base import load_tasks
    from erl.envs.registry import env_class, make_env

    for task in load_tasks(args.file)[: args.n]:
        env = make_env(task)
        observation, _ = env.reset()
        print(f"=== {task['task_id']}\n[system] {env_class(task['env']).system_prompt(task)}\n"
              f"[user]\n{observation}\n")
        env.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erl-tasks", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write OUT/train.jsonl and OUT/val.jsonl")
    w.add_argument("env", help="environment name (frozenlake, sokoban, ...)")
    w.add_argument("--n-train", type=int, default=None, help="default: erl-train's env.n_train")
    w.add_argument("--n-val", type=int, default=None, help="default: erl-train's env.n_val")
    w.add_argument("--seed", type=int, default=None, help="default: erl-train's seed")
    w.add_argument("--out", required=True, help="output directory")
    w.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="an env param (repeatable) over erl-train's env.params, e.g. size_max=5 or symbols.hole=%%")
    w.set_defaults(func=cmd_write)
    s = sub.add_parser("show", help="print the system prompt and first observation of tasks in a file")
    s.add_argument("file")
    s.add_argument("--n", type=int, default=3)
    s.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError
        print(f"erl-tasks: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
