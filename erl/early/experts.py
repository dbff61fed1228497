"""Expert trajectories from the environments' exact solvers, and environments put into a state.

The grid games are deterministic, so "the environment in state s_i" is a fresh env that has
replayed the expert's first i actions: no env needs a set-state method. Every replayed state
is compared with the recorded one, so an env that is not deterministic fails loudly instead
of producing transitions from the wrong state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from erl.core.config import ConfigError
from erl.envs.base import ACTIONS, action_text
from erl.envs.registry import make_env


def _frozenlake(task: dict) -> list[str] | None:
    from erl.envs.frozenlake import shortest_path

    return shortest_path(task["grid"])


def _sokoban(task: dict) -> list[str] | None:
    from erl.envs.sokoban_solver import parse_room, solve

    return solve(parse_room(task["room"]))


# env name -> (solver: task -> shortest action list or None, the env's action space).
# HotpotQA has no exact solver here: an "expert" there would need gold search queries.
SOLVERS: dict[str, tuple[Callable[[dict], list[str] | None], tuple[str, ...]]] = {
    "frozenlake": (_frozenlake, ACTIONS),
    "sokoban": (_sokoban, ACTIONS),
}


def register_solver(env: str, solver: Callable[[dict], list[str] | None], actions: tuple[str, ...]) -> None:
    SOLVERS[env] = (solver, tuple(actions))


def _spec(env: Any):
    if env not in SOLVERS:
        raise ConfigError(f"early experience: no expert solver for env {env!r}; solvers exist for "
                          f"{sorted(SOLVERS)} (add one with erl.early.experts.register_solver)")
    return SOLVERS[env]


def action_space(env: str) -> tuple[str, ...]:
    return _spec(env)[1]


def expert_actions(task: dict) -> list[str]:
    """The solver's shortest action sequence for `task`."""
    solver, _ = _spec(task.get("env"))
    tid = task.get("task_id")
    try:
        path = solver(task)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"task {tid!r}: the {task.get('env')} solver cannot read it: {exc}") from exc
    if not path:
        raise ValueError(f"task {tid!r} has no expert trajectory (the solver found {path!r})")
    return list(path)


@dataclass
class ExpertStep:
    """s_i, a_i and s_{i+1}: observations exactly as the agent sees them."""

    index: int
    state: str
    action: str
    next_state: str


def _rejection(info: dict) -> str | None:
    if not info.get("valid", True):
        return "the env could not parse it"
    if not info.get("moved", True):
        return "it changed nothing (blocked)"
    return None


def expert_trajectory(task: dict, actions: list[str] | None = None) -> list[ExpertStep]:
    """Play the expert's actions; every one must be accepted and the last must succeed."""
    actions = expert_actions(task) if actions is None else list(actions)
    tid = task.get("task_id")
    env = make_env(task)
    state, _ = env.reset()
    steps = []
    for i, action in enumerate(actions):
        nxt, _, done, info = env.step(action_text(action))
        why = _rejection(info)
        if why:
            raise ValueError(f"task {tid!r}: the env rejects expert action {i} ({action!r}): {why}")
        last = i == len(actions) - 1
        if done and not last:
            raise ValueError(f"task {tid!r}: expert action {i} ({action!r}) ends the episode "
                             f"({info.get('end')}) before the trajectory's {len(actions)} actions")
        if last and not info.get("success"):
            raise ValueError(f"task {tid!r}: the expert trajectory {actions} does not reach the goal")
        steps.append(ExpertStep(i, str(state), action, str(nxt)))
        state = nxt
    env.close()
    return steps


def step_from(task: dict, prefix: list[str], action: str, expected_state: str) -> tuple[str, bool, dict]:
    """Put a fresh env into the state after `prefix`, take `action` there: (s', done, info)."""
    env = make_env(task)
    state, _ = env.reset()
    for a in prefix:
        state, _, _, _ = env.step(action_text(a))
    if str(state) != expected_state:
        raise ValueError(f"task {task.get('task_id')!r}: replaying {prefix} does not reproduce the expert's "
                         "state; early experience needs a deterministic env")
    nxt, _, done, info = env.step(action_text(action))
    env.close()
    return str(nxt), bool(done), dict(info)
