"""Name -> environment class. Classes are imported lazily so that a task's optional
dependencies (bm25s for HotpotQA) are only needed when that task is used.

An environment class provides (see erl/envs/base.py's `TaskEnv`):
    system_prompt(task) -> str         what the agent is told: the action interface only
    from_dict(task) -> env             a fresh env for one attempt (rLLM's BaseEnv.from_dict)
    make_tasks(n, seed, split, **params) -> list[dict]
    validate_params(params)            raises ConfigError naming the bad field
"""

from __future__ import annotations

import functools
import importlib
from types import SimpleNamespace
from typing import Any

from erl.core.config import ConfigError, check_ints, check_keys

ENVS: dict[str, str] = {
    "frozenlake": "erl.envs.frozenlake:FrozenLakeEnv",
    "sokoban": "erl.envs.sokoban:SokobanEnv",
    "hotpotqa": "erl.envs.hotpotqa:HotpotQAEnv",
}


REQUIRED = ("system_prompt", "from_dict", "make_tasks", "validate_params")


def _missing(cls: Any) -> list[str]:
    """What of an environment class's interface `cls` lacks."""
    return [m for m in REQUIRED if not callable(getattr(cls, m, None))]


def register_env(name: str, target: str | type) -> None:
    """Add an environment in this process: `target` is a class or a "module:Class" string. A CLI
    run (and verl's Ray workers) never runs the caller's code: name the class by its import path
    there instead, `env.name=package.module:Class`."""
    missing = [] if isinstance(target, str) else _missing(target)
    if missing:  # said now, not as an AttributeError at the first task
        raise TypeError(f"register_env({name!r}): {getattr(target, '__name__', target)!r} lacks {missing}: an "
                        f"environment class provides {list(REQUIRED)} (erl/envs/base.py TaskEnv)")
    ENVS[name] = target  # type: ignore[assignment]


@functools.cache
def _import(target: str, name: Any) -> type:
    """The class at `target`, checked; once per process (env_class runs for every attempt's env)."""
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"env.name: cannot import {target!r} ({type(exc).__name__}: {exc})") from None
    missing = _missing(cls)
    if missing:
        raise ConfigError(f"env.name: {name!r} ({target}) lacks {missing}: an environment class provides "
                          f"{list(REQUIRED)} (erl/envs/base.py TaskEnv)")
    return cls


def env_class(name: Any) -> type:
    """The class of a registered name, or of an import path "package.module:Class" (which needs no
    registration, so a CLI run and every Ray worker reach it)."""
    if name in ENVS:
        target = ENVS[name]
        return _import(target, name) if isinstance(target, str) else target
    if isinstance(name, str) and ":" in name:
        return _import(name, name)
    raise ConfigError(f"env.name: unknown environment {name!r}; known: {sorted(ENVS)}, or a class by its "
                      "import path (package.module:Class)")


def make_env(task: dict) -> Any:
    """A fresh environment for one attempt at `task` (task["env"] names the class)."""
    return env_class(task.get("env")).from_dict(task)


def make_tasks(name: str, n: int, seed: int = 0, split: str = "train", **params) -> list[dict]:
    tasks = env_class(name).make_tasks(n, seed=seed, split=split, **params)
    if name not in ENVS:  # an import path: the tasks name their class by it, for every process that makes their env
        tasks = [{**t, "env": name} for t in tasks]
    return tasks


def validate_env_params(name: str, params: dict) -> None:
    env_class(name).validate_params(dict(params))


ENV_KEYS = ("name", "params", "n_train", "n_val")


def check_env_section(env: Any, max_turns: int) -> tuple[str, dict]:
    """The `env:` section of either trainer's config, checked in one place: known keys, a
    known env, its params, task counts, and attempts (erl.max_turns) at least as long as the
    env's own episodes. Returns (name, params); raises ConfigError naming the field."""
    if not isinstance(env, dict):
        raise ConfigError("config has no `env:` section")
    check_keys("env", env, ENV_KEYS)
    name = env.get("name")
    params = dict(env.get("params") or {})
    validate_env_params(name, params)  # an unknown name first: ConfigError listing the known ones
    check_ints("env", SimpleNamespace(n_train=env.get("n_train", 256), n_val=env.get("n_val", 64)),
               ("n_train", "n_val"), 1)
    env_turns = params.get("max_turns")
    if isinstance(env_turns, int) and max_turns < env_turns:
        raise ConfigError(f"erl.max_turns ({max_turns}) < env.params.max_turns ({env_turns}): attempts would "
                          "be cut before the environment ends them; make them equal")
    return name, params

