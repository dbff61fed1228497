"""Name -> environment class. Classes are imported lazily so that a task's optional
dependencies (bm25s for HotpotQA) are only needed when that task is used.

An environment class provides (see erl/envs/base.py's `TaskEnv`):
    system_prompt(task) -> str         what the agent is told: the action interface only
    from_dict(task) -> env             a fresh env for one attempt (rLLM's BaseEnv.from_dict)
    make_tasks(n, seed, split, **params) -> list[dict]
    validate_params(params)            raises ConfigError naming the bad field
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

from erl.core.config import ConfigError, check_ints, check_keys

ENVS: dict[str, str] = {
    "frozenlake": "erl.envs.frozenlake:FrozenLakeEnv",
    "sokoban": "erl.envs.sokoban:SokobanEnv",
    "hotpotqa": "erl.envs.hotpotqa:HotpotQAEnv",
}


def register_env(name: str, target: str | type) -> None:
    """Add an environment: `target` is a class or a "module:Class" string."""
    ENVS[name] = target  # type: ignore[assignment]


def env_class(name: Any) -> type:
    if name not in ENVS:
        raise ConfigError(f"env.name: unknown environment {name!r}; known: {sorted(ENVS)}")
    target = ENVS[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    return target


def make_env(task: dict) -> Any:
    """A fresh environment for one attempt at `task` (task["env"] names the class)."""
    return env_class(task.get("env")).from_dict(task)


def make_tasks(name: str, n: int, seed: int = 0, split: str = "train", **params) -> list[dict]:
    return env_class(name).make_tasks(n, seed=seed, split=split, **params)


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

