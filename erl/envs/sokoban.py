"""Sokoban without rules: one box, one target; push the box onto the target.

Rooms are square, walled all round, with random inner walls; every generated room is
solvable in min_moves..max_moves player moves (checked with the exact BFS solver).
A push that leaves the box where it can never reach the target (a corner, or anything
else the solver cannot solve) ends the episode with reward 0, as running out of turns does.

Task layout: "room", XSB rows (see sokoban_solver), "solution", one shortest move
sequence. memory_key is "sokoban": one reflection pool for all rooms.
"""

from __future__ import annotations

import random
from typing import ClassVar

from erl.core.config import ConfigError
from erl.envs.base import GridEnv, check_float, check_int, check_sizes
from erl.envs.sokoban_solver import XSB, Room, format_room, parse_room, solve, step

SYMBOLS = {"player": "K", "floor": "-", "wall": "Z", "box": "R", "target": "J",
           "box_on_target": "Y", "player_on_target": "V"}


class SokobanEnv(GridEnv):
    """## Action
    One of up, down, left, right per turn (the player walks, or pushes the box it walks
    into); anything else is an invalid action: the turn is spent, the room unchanged.
    ## Observation
    The room as text with the task's symbols (player, floor, wall, box, target and their
    combinations; not explained), then a one-line feedback of what the last action did.
    ## Reward
    1 when the box is on the target, else 0.
    ## Episode end
    The box reaches the target (1), a push leaves the room unsolvable (0), or `max_turns`
    turns have passed (0).
    """

    name = "sokoban"
    SYMBOLS = SYMBOLS
    PARAMS: ClassVar[dict] = {"size_min": 5, "size_max": 6, "wall_prob": 0.1, "min_moves": 1, "max_moves": 8,
              "max_turns": 8, "symbols": {}, "action_tag": False}

    @classmethod
    def check_params(cls, params: dict) -> None:
        super().check_params(params)
        # size counts the outer wall: 5 leaves a 3x3 floor, the least in which a box can move
        check_sizes(params, 5, 9)
        check_float(params, "wall_prob", 0.0, 0.5)
        check_int(params, "max_moves", 1, 100)
        check_int(params, "min_moves", 1, 100)
        if params["max_moves"] > params["max_turns"]:
            raise ConfigError(f"env.params.max_moves ({params['max_moves']}) must be <= env.params.max_turns "
                              f"({params['max_turns']}): every room must be solvable within the turns")
        if params["min_moves"] > params["max_moves"]:
            raise ConfigError(f"env.params.min_moves ({params['min_moves']}) must be <= "
                              f"env.params.max_moves ({params['max_moves']})")

    @classmethod
    def sample_layout(cls, rng: random.Random, params: dict) -> dict | None:
        size = rng.randint(params["size_min"], params["size_max"])
        walls, floor = set(), []
        for r in range(size):
            for c in range(size):
                border = r in (0, size - 1) or c in (0, size - 1)
                if border or rng.random() < params["wall_prob"]:
                    walls.add((r, c))
                else:
                    floor.append((r, c))
        if len(floor) < 3:
            return None
        target, box, player = rng.sample(floor, 3)
        room = Room(size, size, frozenset(walls), target, box, player)
        path = solve(room, max_moves=params["max_moves"])
        if path is None or len(path) < params["min_moves"]:
            return None
        rows = format_room(room)
        return {"key": "\n".join(rows), "size": size, "room": rows, "solution": path}

    def load(self, task: dict) -> None:
        try:
            self.room = parse_room(task.get("room"))
        except ValueError as e:
            raise ValueError(f"task {task.get('task_id')!r}: bad 'room': {e}") from None
        self.player, self.box = self.room.player, self.room.box

    def move(self, direction: str) -> tuple[bool, str | None]:
        nxt = step(self.room, self.player, self.box, direction)
        if nxt is None:
            return False, None
        pushed = nxt[1] != self.box
        self.player, self.box = nxt
        if self.box == self.room.target:
            return True, "success"
        if pushed and solve(self.room, self.player, self.box) is None:
            return True, "deadlock"  # only a push can change whether the room is solvable
        return True, None

    def roles(self) -> list[list[str]]:
        return [[XSB[ch] for ch in row] for row in format_room(self.room, self.player, self.box)]
