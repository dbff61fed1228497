"""One-box Sokoban rooms and their breadth-first solver.

A state is (player, box); each move is one player step, pushing the box when the player
walks into it. With a single box the state space is at most cells^2 (about 2,400 states in
a 9x9 room), so an exact BFS is cheap enough to run after every push: that is how the env
detects deadlocks (a box in a corner is one case; the solver catches all of them).

Rooms are stored in the standard XSB notation: # wall, space floor, @ player, $ box,
. target, * box on target, + player on target.
"""

from __future__ import annotations

from dataclasses import dataclass

from erl.envs.base import MOVES, bfs_path

Pos = tuple[int, int]
XSB = {"#": "wall", " ": "floor", "@": "player", "$": "box", ".": "target",
       "*": "box_on_target", "+": "player_on_target"}


@dataclass(frozen=True)
class Room:
    height: int
    width: int
    walls: frozenset[Pos]
    target: Pos
    box: Pos
    player: Pos

    def blocked(self, pos: Pos) -> bool:
        """Walls and everything outside the room stop the player and the box."""
        r, c = pos
        return pos in self.walls or not (0 <= r < self.height and 0 <= c < self.width)


def parse_room(rows: list[str]) -> Room:
    """XSB rows -> Room; exactly one player, one box and one target."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, str) for r in rows):
        raise ValueError(f"a room is a list of XSB strings, got {rows!r}")
    found: dict[str, list[Pos]] = {"player": [], "box": [], "target": []}
    walls = set()
    for r, row in enumerate(rows):
        for c, ch in enumerate(row):
            if ch not in XSB:
                raise ValueError(f"room row {r}: unknown character {ch!r} (XSB: {''.join(XSB)})")
            if ch == "#":
                walls.add((r, c))
            if ch in "@+":
                found["player"].append((r, c))
            if ch in "$*":
                found["box"].append((r, c))
            if ch in ".*+":
                found["target"].append((r, c))
    for role, where in found.items():
        if len(where) != 1:
            raise ValueError(f"a room needs exactly one {role}, found {len(where)} in {rows!r}")
    return Room(len(rows), max(len(r) for r in rows), frozenset(walls),
                found["target"][0], found["box"][0], found["player"][0])


def format_room(room: Room, player: Pos | None = None, box: Pos | None = None) -> list[str]:
    player = room.player if player is None else player
    box = room.box if box is None else box
    rows = []
    for r in range(room.height):
        row = ""
        for c in range(room.width):
            p = (r, c)
            on_target = p == room.target
            if p in room.walls:
                row += "#"
            elif p == box:
                row += "*" if on_target else "$"
            elif p == player:
                row += "+" if on_target else "@"
            else:
                row += "." if on_target else " "
        rows.append(row)
    return rows


def step(room: Room, player: Pos, box: Pos, direction: str) -> tuple[Pos, Pos] | None:
    """The state after one move, or None when the move is blocked (nothing changes)."""
    dr, dc = MOVES[direction]
    nxt = (player[0] + dr, player[1] + dc)
    if room.blocked(nxt):
        return None
    if nxt != box:
        return nxt, box
    beyond = (box[0] + dr, box[1] + dc)
    if room.blocked(beyond):
        return None
    return nxt, beyond


def solve(room: Room, player: Pos | None = None, box: Pos | None = None,
          max_moves: int | None = None) -> list[str] | None:
    """A shortest move sequence that puts the box on the target (within max_moves), or None."""
    start = (room.player if player is None else player, room.box if box is None else box)

    def successors(state):
        for direction in MOVES:
            nxt = step(room, state[0], state[1], direction)
            if nxt is not None:
                yield direction, nxt

    return bfs_path(start, successors, lambda s: s[1] == room.target, max_moves)
