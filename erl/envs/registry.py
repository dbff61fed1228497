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
from typing import Any

from erl.core.config import ConfigError

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
