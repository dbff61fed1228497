"""FrozenLake without rules: walk from the start to the goal cell, avoiding holes.

The model only learns the action interface; the grid uses unfamiliar symbols, so what
the cells mean (and that stepping on one ends the game) must be found by experience.
Moves are deterministic (not slippery); a move off the grid does nothing.

Task layout: "grid", rows in Gymnasium's notation (S start, F floor, H hole, G goal),
which only people and this file read; "solution", one shortest action sequence.
memory_key is "frozenlake": the rules are the same on every grid, so one reflection
pool serves all tasks (retrieval ranks within it by the first observation).
"""

from __future__ import annotations

import random
from typing import ClassVar

from erl.core.config import ConfigError
from erl.envs.base import MOVES, GridEnv, bfs_path, check_float, check_sizes

SYMBOLS = {"player": "K", "floor": "-", "hole": "Q", "goal": "J"}
CELLS = {"S": "floor", "F": "floor", "H": "hole", "G": "goal"}


def grid_successors(grid: list[str]):
    """Moves that stay on the grid and do not enter a hole (the goal ends the walk anyway)."""
    size = len(grid)

    def successors(pos):
        for action, (dr, dc) in MOVES.items():
            r, c = pos[0] + dr, pos[1] + dc
            if 0 <= r < size and 0 <= c < size and grid[r][c] != "H":
                yield action, (r, c)

    return successors


def shortest_path(grid: list[str]) -> list[str] | None:
    """One shortest action sequence from S to G that never enters H, or None."""
    start = find(grid, "S")
    return bfs_path(start, grid_successors(grid), lambda p: grid[p[0]][p[1]] == "G")


def find(grid: list[str], char: str) -> tuple[int, int]:
    return next((r, row.index(char)) for r, row in enumerate(grid) if char in row)


class FrozenLakeEnv(GridEnv):
    """## Action
    One of up, down, left, right per turn, parsed from the reply (`<action>up</action>` wins
    if present); anything else is an invalid action: the turn is spent, the grid unchanged.
    ## Observation
    The grid as text with the task's symbols (player, floor, hole, goal; not explained), then
    a one-line feedback of what the last action did.
    ## Reward
    1 on reaching the goal, else 0 (sparse; success means reward 1).
    ## Episode end
    The goal (1) or a hole (0) is reached, or `max_turns` turns have passed (0).
    """

    name = "frozenlake"
    SYMBOLS = SYMBOLS
    PARAMS: ClassVar[dict] = {"size_min": 2, "size_max": 4, "hole_prob": 0.2, "max_turns": 8, "symbols": {},
                              "start_goal": "random", "action_tag": False}
    # corners: Gymnasium's generate_random_map convention (start top-left, goal bottom-right,
    # random holes); random: both anywhere, a harder task whose direction must be read off the grid.
    START_GOAL = ("corners", "random")

    @classmethod
    def check_params(cls, params: dict) -> None:
        super().check_params(params)
        check_sizes(params, 2, 9)
        check_float(params, "hole_prob", 0.0, 0.6)  # beyond that, solvable grids get rare
        if params["start_goal"] not in cls.START_GOAL:
            raise ConfigError(f"env.params.start_goal must be one of {cls.START_GOAL}, got {params['start_goal']!r}")
        if params["start_goal"] == "corners" and 2 * (params["size_min"] - 1) > params["max_turns"]:
            raise ConfigError(f"env.params: with start_goal=corners a grid of side {params['size_min']} needs "
                              f"{2 * (params['size_min'] - 1)} moves, more than max_turns={params['max_turns']}")

    @classmethod
    def sample_layout(cls, rng: random.Random, params: dict) -> dict | None:
        size = rng.randint(params["size_min"], params["size_max"])
        cells = [(r, c) for r in range(size) for c in range(size)]
        if params["start_goal"] == "corners":
            start, goal = (0, 0), (size - 1, size - 1)
        else:
            start = rng.choice(cells)
            # The goal must be reachable within max_turns, so draw it from cells near enough.
            near = [p for p in cells if 0 < abs(p[0] - start[0]) + abs(p[1] - start[1]) <= params["max_turns"]]
            goal = rng.choice(near)
        rows = [["H" if rng.random() < params["hole_prob"] else "F" for _ in range(size)] for _ in range(size)]
        rows[start[0]][start[1]], rows[goal[0]][goal[1]] = "S", "G"
        grid = ["".join(row) for row in rows]
        path = shortest_path(grid)
        if path is None or len(path) > params["max_turns"]:
            return None
        return {"key": "\n".join(grid), "size": size, "grid": grid, "solution": path}

    def load(self, task: dict) -> None:
        grid = task.get("grid")
        ok = (isinstance(grid, list) and 2 <= len(grid) and all(isinstance(r, str) and len(r) == len(grid)
              and set(r) <= set(CELLS) for r in grid) and "".join(grid).count("S") == 1
              and "".join(grid).count("G") == 1)
        if not ok:
            raise ValueError(f"task {task.get('task_id')!r}: 'grid' must be square rows of S/F/H/G "
                             f"with one S and one G, got {grid!r}")
        self.grid = grid
        self.pos = find(grid, "S")

    def move(self, direction: str) -> tuple[bool, str | None]:
        dr, dc = MOVES[direction]
        r, c = self.pos[0] + dr, self.pos[1] + dc
        if not (0 <= r < len(self.grid) and 0 <= c < len(self.grid)):
            return False, None
        self.pos = (r, c)
        cell = self.grid[r][c]
        return True, {"H": "hole", "G": "success"}.get(cell)

    def roles(self) -> list[list[str]]:
        rows = [[CELLS[ch] for ch in row] for row in self.grid]
        rows[self.pos[0]][self.pos[1]] = "player"
        return rows
