"""Shared pieces of the text environments: task files, params, splits, action parsing,
and `GridEnv`, the turn loop that FrozenLake and Sokoban share.

A task is a plain JSON-able dict: {"task_id", "env", "split", "memory_key", ...layout}.
The env class (registered in erl/envs/registry.py) turns it into a fresh env per attempt.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from erl.core.config import ConfigError, check_keys
from erl.core.interfaces import BaseEnv
from erl.core.tags import last_tag_block
from erl.envs.symbols import render_grid, resolve_symbols
from erl.fileio import read_jsonl_objects

ACTIONS = ("up", "down", "left", "right")
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
SPLITS = ("train", "val")
VAL_PERCENT = 20  # share of the layout space held out for val (see layout_split)
MAX_ACTION_CHARS = 2000  # only the tail of a reply is parsed: a huge reply costs nothing
MAX_SAMPLE_TRIES = 20_000  # layout draws per task before generation gives up
DUPLICATE_TRIES = 20  # draws spent avoiding a layout already in the split

# ---------------------------------------------------------------- task files


def write_tasks(path: str | Path, tasks: Iterable[dict]) -> int:
    """One task per line (JSON Lines). Returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for task in tasks:
            f.write(json.dumps(task, ensure_ascii=False) + "\n")
            n += 1
    return n


def load_tasks(path: str | Path) -> list[dict]:
    """Read a JSON Lines task file; every line must be an object with `task_id` and `env`
    that its env can play (checked by building the env once)."""
    tasks: list[dict] = []
    first_line: dict[str, int] = {}
    for lineno, task in read_jsonl_objects(path, "task"):
        where = f"{path}:{lineno}"
        for key in ("task_id", "env"):
            if not isinstance(task.get(key), str) or not task[key]:
                raise ConfigError(f"{where}: task has no {key!r} (a non-empty string is required)")
        if task["task_id"] in first_line:
            raise ConfigError(f"{where}: duplicate task_id {task['task_id']!r} "
                              f"(first on line {first_line[task['task_id']]})")
        first_line[task["task_id"]] = lineno
        tasks.append(task)
    for task in tasks:  # after the whole file is read: a malformed line is reported first
        check_playable(task, f"{path}:{first_line[task['task_id']]}")
    return tasks


def check_playable(task: dict, where: str) -> None:
    """Build the task's env once: a task without its layout (or with a broken one) is
    reported with its file and line before a model is loaded, not mid-evaluation."""
    from erl.envs.registry import make_env

    try:
        make_env(task)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        missing = f"no {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ConfigError(f"{where}: task {task['task_id']!r} is not a playable {task['env']} task "
                          f"({missing})") from None


# ---------------------------------------------------------------- params


def check_known(params: Mapping, known: Iterable[str]) -> None:
    check_keys("env.params", params, known)


def check_int(params: Mapping, name: str, low: int, high: int) -> int:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"env.params.{name} must be an integer in {low}..{high}, got {value!r}")
    return value


def check_float(params: Mapping, name: str, low: float, high: float) -> float:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"env.params.{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def check_sizes(params: Mapping, low: int, high: int) -> None:
    """size_min and size_max both in low..high, in that order."""
    check_int(params, "size_min", low, high)
    check_int(params, "size_max", low, high)
    if params["size_max"] < params["size_min"]:
        raise ConfigError(f"env.params.size_max ({params['size_max']}) must be >= "
                          f"env.params.size_min ({params['size_min']})")


# ---------------------------------------------------------------- splits and seeding


def layout_split(env: str, key: str) -> str:
    """Train or val, decided by a digest of the layout itself: the splits stay disjoint
    whatever n and seed are asked for (sha256, not hash(): same answer in every process)."""
    bucket = int(hashlib.sha256(f"{env}\n{key}".encode()).hexdigest()[:8], 16) % 100
    return "val" if bucket < VAL_PERCENT else "train"


def task_rng(env: str, split: str, seed: int, index: int) -> random.Random:
    """One generator per task: task i does not depend on n (a string seed is hashed with sha512)."""
    return random.Random(f"{env}/{split}/{seed}/{index}")


# ---------------------------------------------------------------- actions and search


def parse_action(text: Any, actions: tuple[str, ...] = ACTIONS, require_tag: bool = False) -> str | None:
    """The action in a model reply, or None.

    `<action>X</action>` wins if present (the last such tag; an unknown X is invalid, not
    a fallback); otherwise the last standalone action word, case-insensitive, unless
    `require_tag`: under RL that loose fallback rewards any text whose last direction word is
    right, and a 135M policy drifts into word salad ("Your up your down down your ...",
    docs/gpu/rollout_engine/training/frozenlake-erl-s0/samples.jsonl).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        return None
    text = text[-MAX_ACTION_CHARS:]
    tagged = last_tag_block(text, "<action>", "</action>", ignore_case=True)
    if tagged is not None:
        word = tagged.strip().strip(".!'\"`").lower()
        return word if word in actions else None
    if require_tag:
        return None
    words = re.findall(r"\b(" + "|".join(map(re.escape, actions)) + r")\b", text, flags=re.IGNORECASE)
    return words[-1].lower() if words else None


ACTION_FORMAT = "<action>{action}</action>"  # the tagged move parse_action prefers (the only one with action_tag)


def action_text(action: str, fmt: str = ACTION_FORMAT) -> str:
    """An action written as a reply. In the default format every grid env accepts it, with or
    without `action_tag`: code that plays an env itself (the Early Experience expert and its
    alternatives) speaks that strict form."""
    return fmt.format(action=action)


def quote_reply(text: Any, limit: int = 40) -> str:
    """A short, single-line echo of an invalid reply for the feedback message."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(str(text if text is not None else "").split())
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def bfs_path(start: Hashable, successors: Callable[[Any], Iterable[tuple[str, Any]]],
             is_goal: Callable[[Any], bool], max_depth: int | None = None) -> list[str] | None:
    """Shortest action sequence from `start` to a goal state, or None (also beyond max_depth)."""
    parent: dict[Any, tuple[Any, str] | None] = {start: None}
    depth = {start: 0}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if is_goal(state):
            path = []
            while parent[state] is not None:
                state, action = parent[state]
                path.append(action)
            return path[::-1]
        if max_depth is not None and depth[state] >= max_depth:
            continue
        for action, nxt in successors(state):
            if nxt not in parent:
                parent[nxt] = (state, action)
                depth[nxt] = depth[state] + 1
                queue.append(nxt)
    return None


# ---------------------------------------------------------------- environments


class TaskEnv(BaseEnv):
    """An env built from a task dict, with seeded, split-disjoint task generation.

    Subclasses set `name` and `PARAMS` (defaults) and implement `check_params` and
    `sample_layout(rng, params) -> dict | None` (None: draw again), whose dict holds a
    "key" (the layout as text, for splits and de-duplication) and the task's layout fields.
    """

    name = ""
    PARAMS: ClassVar[dict[str, Any]] = {}

    def __init__(self, task: dict):
        self.task = task

    @property
    def idx(self) -> Any:
        return self.task.get("task_id")

    @classmethod
    def from_dict(cls, task: dict) -> TaskEnv:
        return cls(task)

    @classmethod
    def validate_params(cls, params: Mapping | None) -> dict:
        """Defaults merged with `params`, checked; raises ConfigError naming the field."""
        params = dict(params or {})
        check_known(params, cls.PARAMS)
        merged = {**cls.PARAMS, **params}
        cls.check_params(merged)
        return merged

    @classmethod
    def check_params(cls, params: dict) -> None:
        pass

    @classmethod
    def sample_layout(cls, rng: random.Random, params: dict) -> dict | None:
        raise NotImplementedError

    @classmethod
    def task_fields(cls, params: dict) -> dict:
        """What every task carries besides its layout (what the env needs at play time)."""
        return {}

    @classmethod
    def make_tasks(cls, n: int, seed: int = 0, split: str = "train", **params) -> list[dict]:
        params = cls.validate_params(params)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"n (number of tasks) must be an integer >= 0, got {n!r}")
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
        tasks, seen = [], set()
        for i in range(n):
            rng = task_rng(cls.name, split, seed, i)
            duplicates = 0
            for _ in range(MAX_SAMPLE_TRIES):
                layout = cls.sample_layout(rng, params)
                if layout is None or layout_split(cls.name, layout["key"]) != split:
                    continue
                if layout["key"] not in seen or duplicates >= DUPLICATE_TRIES:
                    break  # a small layout space may run out: then a repeat is allowed
                duplicates += 1
            else:
                raise ConfigError(f"env.params: no {split} layout found in {MAX_SAMPLE_TRIES} draws for "
                                  f"{cls.name} with {params}; widen the size range or loosen the limits")
            seen.add(layout.pop("key"))
            tasks.append({"task_id": f"{cls.name}-{split}-{i:05d}", "env": cls.name, "split": split,
                          "memory_key": cls.name, **layout, **cls.task_fields(params)})
        return tasks


# Repeated under every observation: a 135M instruct model names a valid action about 9
# times in 16 with it and almost never without (measured on SmolLM2-135M-Instruct).
# It restates the action interface only, nothing about the rules.
ACTION_PROMPT = "Your action (up, down, left or right):"


class GridEnv(TaskEnv):
    """A grid game driven by the four moves. Reward comes only at the end: 1 on success, else 0.

    Subclasses provide SYMBOLS (role -> default character) and implement `load(task)`
    (set up the start state), `move(direction) -> (moved, end)` with end None, "success"
    or a failure name, and `roles() -> rows of role names` for rendering.
    """

    SYMBOLS: ClassVar[dict[str, str]] = {}

    def __init__(self, task: dict):
        super().__init__(task)
        self.symbols = resolve_symbols(self.SYMBOLS, task.get("symbols"), "task.symbols")
        self.max_turns = int(task.get("max_turns", self.PARAMS.get("max_turns", 8)))
        self.action_tag = bool(task.get("action_tag", False))
        self.reset()

    @classmethod
    def check_params(cls, params: dict) -> None:
        check_int(params, "max_turns", 1, 100)
        params["symbols"] = resolve_symbols(cls.SYMBOLS, params["symbols"])
        if not isinstance(params.get("action_tag", False), bool):
            raise ConfigError(f"env.params.action_tag must be true or false, got {params['action_tag']!r}")

    @classmethod
    def task_fields(cls, params: dict) -> dict:
        fields = {"max_turns": params["max_turns"], "symbols": dict(params["symbols"])}
        if params.get("action_tag"):  # only then: task files of the default stay as they were
            fields["action_tag"] = True
        return fields

    @classmethod
    def system_prompt(cls, task: dict) -> str:
        turns = int(task.get("max_turns", cls.PARAMS.get("max_turns", 8)))
        how = (f"Write it as {action_text('up')}: a reply without that tag is not a move." if task.get("action_tag")
               else f"You may write it as {action_text('up')}.")
        return ("You are playing a turn-based game on a grid. Each turn you are shown the grid as text, "
                "after the result of your last action. Each turn, reply with exactly one action: "
                f"up, down, left or right. {how} The game lasts at most {turns} turns.")

    def load(self, task: dict) -> None:
        raise NotImplementedError

    def move(self, direction: str) -> tuple[bool, str | None]:
        raise NotImplementedError

    def roles(self) -> list[list[str]]:
        raise NotImplementedError

    def render(self) -> str:
        return render_grid(self.roles(), self.symbols)

    def reset(self) -> tuple[str, dict]:
        self.load(self.task)
        self.turn, self.done, self.success = 0, False, False
        return f"{self.render()}\n{ACTION_PROMPT}", {"success": False, "turn": 0}

    def step(self, action: Any) -> tuple[str, float, bool, dict]:
        if self.done:
            return "The episode has already ended.", 0.0, True, {"success": self.success, "turn": self.turn,
                                                                  "valid": False, "moved": False}
        self.turn += 1
        action = getattr(action, "action", action)  # an rLLM-style Action wrapper
        direction = parse_action(action, require_tag=self.action_tag)
        moved, end = False, None
        if direction is None:
            valid = ", ".join(action_text(a) if self.action_tag else a for a in ACTIONS)
            feedback = f"Invalid action {quote_reply(action)}. Valid actions: {valid}."
        else:
            moved, end = self.move(direction)
            feedback = "You moved." if moved else "Nothing happened."
        if end is None and self.turn >= self.max_turns:
            end = "out_of_turns"
        self.done = end is not None
        self.success = end == "success"
        reward = 1.0 if self.success else 0.0
        observation = f"{feedback}\n{self.render()}"
        if self.done:
            observation += f"\nThe episode ended. Reward: {reward:g}"
        else:
            observation += f"\n{ACTION_PROMPT}"
        info = {"success": self.success, "valid": direction is not None, "moved": moved,
                "action": direction, "turn": self.turn, "end": end}
        return observation, reward, self.done, info
