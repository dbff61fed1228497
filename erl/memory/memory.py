"""ReflectionMemory: successful reflections, keyed by task, retrieved for the next reflection.

ERL stores a reflection D in memory when the second attempt it guided succeeded, and shows the
best stored reflection to the model when it writes the next one. The reference code kept one
reflection per workflow instance; this memory is shared by every rollout worker (wrap it in
`erl.memory.ray_memory` for that), retrieves by task key and query similarity, is bounded, and
round-trips exactly through `state_dict()` so a resumed run retrieves what the original would.

Rules (also in the method docstrings):
- similarity: cosine of bag-of-words counts, tokens = lower-cased `\\w+` runs plus every single
  non-space symbol (grid observations are made of symbols such as `#`, `@`), 0.0 if either side
  has no tokens.
- ranking: entries with the caller's key by (similarity, reward, step, insertion) descending; if
  fewer than k, other keys' entries with similarity > 0, same order, fill the remainder.
- eviction (full memory, new text): the newcomer is always stored; the victim is the existing
  entry with the lowest reward, ties -> fewest uses, then lowest step, then oldest insertion.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

STATE_VERSION = 1
_TOKEN = re.compile(r"\w+|[^\w\s]")
_COUNTERS = ("adds", "duplicates", "evictions", "retrievals", "hits")


@dataclass
class MemoryEntry:
    text: str
    key: str
    reward: float
    step: int
    query: str
    uses: int = 0
    added: int = 0  # insertion counter: unique, increasing, the tie-break for "older"


def bag_of_words(text: str) -> Counter:
    return Counter(t.lower() for t in _TOKEN.findall(text))


def _squares(bag: Counter) -> int:
    return sum(n * n for n in bag.values())


def cosine(a: Counter, b: Counter, a_squares: int | None = None, b_squares: int | None = None) -> float:
    """Cosine of two count vectors; 0.0 when either is empty (no evidence of similarity).
    `*_squares`: a vector's sum of squared counts, if known (the memory keeps its entries')."""
    if not a or not b:
        return 0.0
    if len(b) < len(a):
        a, b, a_squares, b_squares = b, a, b_squares, a_squares
    dot = sum(n * b[t] for t, n in a.items() if t in b)
    sa = _squares(a) if a_squares is None else a_squares
    sb = _squares(b) if b_squares is None else b_squares
    return dot / math.sqrt(sa * sb)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_str(name: str, value: Any, non_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if non_empty and not value.strip():
        raise ValueError(f"{name} must be a non-empty str")
    return value


def _check_reward(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"reward must be a finite number, got {value!r}")
    return float(value)


def _rank(scored: tuple[float, MemoryEntry]) -> tuple:
    """Sort key, best first: similarity, reward, later step, later insertion."""
    sim, e = scored
    return (-sim, -e.reward, -e.step, -e.added)


def _checked_entry(d: dict) -> MemoryEntry:
    e = MemoryEntry(**d)
    _check_str("entry.text", e.text, non_empty=True)
    _check_str("entry.key", e.key)
    _check_str("entry.query", e.query)
    e.reward = _check_reward(e.reward)
    for name in ("step", "uses", "added"):
        _check_int(f"entry.{name}", getattr(e, name), 0)
    return e


class ReflectionMemory:
    """Bounded, thread-safe store of successful reflections (see the module docstring for rules)."""

    def __init__(self, max_size: int = 256, top_k: int = 1):
        self.max_size = _check_int("max_size", max_size, 1)
        self.top_k = _check_int("top_k", top_k, 0)
        self._lock = threading.RLock()
        self._entries: list[MemoryEntry] = []  # insertion order, which state_dict preserves
        self._bags: dict[int, tuple[Counter, int]] = {}  # added -> the entry query's bag of words, its squares
        # (key, query, k) -> the entries a retrieval chooses, until a change that can reorder them
        # (an entry stored, evicted or merged; a load). An ERL wave retrieves for n episodes of each
        # task with the task's query, and scoring a full memory (256) took ~0.8 ms a retrieval on a
        # CPU core: ~0.3 s of an ERL collect of 64 tasks x 8 (docs/gpu/decode_host/README.md).
        self._chosen: dict[tuple[str, str, int], list[MemoryEntry]] = {}
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._next_id = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def add(self, text: str, key: str, reward: float, step: int = 0, query: str = "") -> bool:
        """Store a reflection whose second attempt earned `reward`. Returns True when a new entry
        was stored; False when the same text was already stored under `key` (that entry keeps its
        place and uses; its reward becomes the max of both, its step the later one)."""
        _check_str("text", text, non_empty=True)
        _check_str("key", key)
        reward = _check_reward(reward)
        _check_int("step", step, 0)
        _check_str("query", query)
        with self._lock:
            for e in self._entries:
                if e.key == key and e.text == text:
                    e.reward, e.step = max(e.reward, reward), max(e.step, step)
                    self._counts["duplicates"] += 1
                    self._chosen.clear()  # its reward and step rank it
                    return False
            if len(self._entries) >= self.max_size:
                victim = min(self._entries, key=lambda e: (e.reward, e.uses, e.step, e.added))
                self._remove(victim)
                self._counts["evictions"] += 1
            self._insert(MemoryEntry(text, key, reward, step, query, 0, self._next_id))
            self._next_id += 1
            self._counts["adds"] += 1
            return True

    def retrieve(self, key: str, query: str = "", k: int | None = None) -> list[MemoryEntry]:
        """The best `k` (default top_k) entries for a task, best first, as copies.

        Entries under `key` come first, ordered by (cosine(query, entry.query), reward, step,
        insertion) descending. If fewer than k share the key, entries of other keys fill the rest,
        same order, but only those with cosine > 0: a reflection for an unrelated task would
        mislead more than no reflection. Each returned entry's `uses` grows by one.
        """
        _check_str("key", key)
        _check_str("query", query)
        k = self.top_k if k is None else _check_int("k", k, 0)
        with self._lock:
            chosen = self._chosen.get((key, query, k))
            if chosen is None:
                bag = bag_of_words(query)
                squares = _squares(bag)

                def scored(keep) -> list[tuple[float, MemoryEntry]]:
                    return [(cosine(bag, self._bags[e.added][0], squares, self._bags[e.added][1]), e)
                            for e in self._entries if keep(e)]
                same = sorted(scored(lambda e: e.key == key), key=_rank)
                # other keys are scored only when the task's own entries are too few (ERL's retrievals
                # of a step scored the whole memory each: ~0.3 s of an ERL collect's host time)
                other = [] if len(same) >= k else sorted(
                    (se for se in scored(lambda e: e.key != key) if se[0] > 0), key=_rank)
                chosen = self._chosen[(key, query, k)] = [e for _, e in (same + other)[:k]]
            for e in chosen:
                e.uses += 1
            self._counts["retrievals"] += 1
            self._counts["hits"] += bool(chosen)
            return [replace(e) for e in chosen]

    def replay(self, calls: list) -> None:
        """Make the calls of a MemoryJournal, in their order, on this memory: ("add" | "retrieve",
        [arguments]) pairs. Replayed on the state the journal started from, they leave exactly the
        journal's own state (test); on another, what those calls do there."""
        calls = list(calls)
        for call in calls:
            if not (isinstance(call, (list, tuple)) and len(call) == 2 and call[0] in ("add", "retrieve")
                    and isinstance(call[1], (list, tuple))):
                raise ValueError(f"replay: not an (add | retrieve, [arguments]) call: {call!r}")
        with self._lock:
            for method, args in calls:
                getattr(self, method)(*args)

    def entries(self) -> list[MemoryEntry]:
        """Copies of all entries in insertion order (for inspection; counts no use)."""
        with self._lock:
            return [replace(e) for e in self._entries]

    def stats(self) -> dict[str, float]:
        with self._lock:
            c = self._counts
            out = {"size": float(len(self._entries))}
            out.update({name: float(c[name]) for name in _COUNTERS})
            out["hit_rate"] = c["hits"] / c["retrievals"] if c["retrievals"] else 0.0
            return out

    # ---- persistence -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A JSON-able dict from which `load_state_dict` rebuilds this memory exactly."""
        with self._lock:
            return {"version": STATE_VERSION, "max_size": self.max_size, "top_k": self.top_k,
                    "next_id": self._next_id, "counters": dict(self._counts),
                    "entries": [asdict(e) for e in self._entries]}

    def load_state_dict(self, state: dict) -> None:
        """Replace everything (entries, their order, counters, max_size, top_k) with `state`."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a ReflectionMemory state (version {STATE_VERSION}): "
                             f"{str(state)[:80]!r}")
        try:
            max_size = _check_int("max_size", state["max_size"], 1)
            top_k = _check_int("top_k", state["top_k"], 0)
            next_id = _check_int("next_id", state["next_id"], 0)
            counts = {name: _check_int(f"counters.{name}", state["counters"][name], 0)
                      for name in _COUNTERS}
            entries = [_checked_entry(e) for e in state["entries"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"corrupt ReflectionMemory state: {type(exc).__name__}: {exc}") from exc
        ids = [e.added for e in entries]
        if len(entries) > max_size or len(set(ids)) != len(ids) or any(i >= next_id for i in ids):
            raise ValueError("corrupt ReflectionMemory state: too many entries or bad insertion ids")
        with self._lock:
            self.max_size, self.top_k, self._next_id = max_size, top_k, next_id
            self._counts = counts
            self._entries, self._bags = [], {}
            self._chosen.clear()
            for e in entries:
                self._insert(e)

    def save(self, path: str | os.PathLike) -> Path:
        """Write state as JSON atomically: a reader sees the old file or the new one, never half."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.state_dict())
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReflectionMemory:
        memory = cls()
        memory.load_state_dict(json.loads(Path(path).read_text()))
        return memory

    # Picklable (the lock is not): travels as its state.
    def __getstate__(self) -> dict:
        return self.state_dict()

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_size"], state["top_k"])
        self.load_state_dict(state)

    def _insert(self, entry: MemoryEntry) -> None:
        self._chosen.clear()
        self._entries.append(entry)
        bag = bag_of_words(entry.query)
        self._bags[entry.added] = bag, _squares(bag)

    def _remove(self, entry: MemoryEntry) -> None:
        self._chosen.clear()
        self._entries.remove(entry)
        del self._bags[entry.added]


class MemoryJournal:
    """A private copy of a memory for one phase of one worker, and the calls made on it.

    Rollout workers that share one memory actor would see each other's reflections when their
    timing says, so a step's episodes, and a resumed run's, would depend on which worker was
    faster. A worker instead starts each phase from the memory's state (`state`), retrieves
    from and adds to its copy, and hands `calls` back; the driver replays every worker's calls
    on the shared memory in rank order. A worker sees its own additions at once and the others'
    from the next step on; with one worker nothing changes (the replay ends where the copy did)."""

    def __init__(self, state: dict):
        self.memory = ReflectionMemory()
        self.memory.load_state_dict(state)
        self.calls: list[tuple[str, list]] = []

    def add(self, text: str, key: str, reward: float, step: int = 0, query: str = "") -> bool:
        stored = self.memory.add(text, key, reward, step, query)  # checks its arguments first
        self.calls.append(("add", [text, key, float(reward), int(step), query]))
        return stored

    def retrieve(self, key: str, query: str = "", k: int | None = None) -> list[MemoryEntry]:
        chosen = self.memory.retrieve(key, query, k)
        self.calls.append(("retrieve", [key, query, k]))
        return chosen

    def __len__(self) -> int:
        return len(self.memory)
