"""One ReflectionMemory for every rollout worker: a named Ray actor and a picklable client.

The driver calls `get_or_create_memory_actor(...)` once and passes `RayMemoryClient(handle, name)`
to the workers (or each worker calls `RayMemoryClient.connect(name)` itself: Ray resolves the
name to the same actor; a name that resolves to nothing is an error, not a new empty memory). The client has the ReflectionMemory interface; `add`/`retrieve` are async
so a rollout's event loop keeps running while the actor answers (ErlWorkflow awaits them).

Lifetime: Ray kills a non-detached actor when its creator process exits or when no handle to it
is left, so let the driver create it (and hold the client) or pass `detached=True` when a worker
may create it; a detached actor lives until `ray.kill` or the cluster stops.

Ray is imported lazily: `import erl.memory` works without Ray installed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from erl.memory.memory import MemoryEntry, ReflectionMemory

DEFAULT_ACTOR_NAME = "erl_reflection_memory"
_ACTOR_CLASS = None


class MemoryActor:
    """The actor body: a ReflectionMemory behind one `call` entry point.

    Ray runs a plain (non-async) actor's calls one at a time, in arrival order per caller.
    """

    _METHODS = frozenset({"add", "retrieve", "replay", "stats", "state_dict", "load_state_dict", "save",
                          "entries", "__len__"})

    def __init__(self, max_size: int, top_k: int):
        self.memory = ReflectionMemory(max_size=max_size, top_k=top_k)

    def config(self) -> tuple[int, int]:
        return self.memory.max_size, self.memory.top_k

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method not in self._METHODS:
            raise AttributeError(f"ReflectionMemory has no remote method {method!r}")
        result = getattr(self.memory, method)(*args, **kwargs)
        return str(result) if method == "save" else result  # a str path survives any Python


def _actor_class():
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        # num_cpus=0: a bookkeeping actor must not take a CPU that a rollout worker needs.
        _ACTOR_CLASS = ray.remote(num_cpus=0, max_restarts=0)(MemoryActor)
    return _ACTOR_CLASS


def get_or_create_memory_actor(name: str = DEFAULT_ACTOR_NAME, namespace: str | None = None,
                               max_size: int | None = None, top_k: int | None = None,
                               detached: bool = False):
    """The handle of the named memory actor, created (max_size 256, top_k 1 unless given) if absent.

    Safe to call from many processes at once: Ray's `get_if_exists=True` returns the one actor.
    If the actor exists and `max_size`/`top_k` are given but differ from its own, ValueError:
    two parts of a run disagreeing on the memory's shape is a configuration bug.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("get_or_create_memory_actor needs a running Ray: call ray.init() first")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    size = 256 if max_size is None else max_size
    k = 1 if top_k is None else top_k
    ReflectionMemory(size, k)  # validates both before anything is created
    options: dict[str, Any] = {"name": name, "namespace": namespace, "get_if_exists": True}
    if detached:
        options["lifetime"] = "detached"
    handle = _actor_class().options(**options).remote(size, k)
    if max_size is not None or top_k is not None:
        actual = RayMemoryClient(handle, name)._get(handle.config.remote())
        wanted = (size if max_size is not None else actual[0], k if top_k is not None else actual[1])
        if tuple(actual) != wanted:
            raise ValueError(f"memory actor {name!r} exists with (max_size, top_k)={tuple(actual)}, "
                             f"asked for {wanted}")
    return handle


def find_memory_actor(name: str = DEFAULT_ACTOR_NAME, namespace: str | None = None):
    """The handle of an existing memory actor; LookupError naming where it is, if not here."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("find_memory_actor needs a running Ray: call ray.init() first")
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:  # Ray's "failed to look up actor"
        pass
    here = namespace or ray.get_runtime_context().namespace
    elsewhere = sorted({a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True)
                        if a["name"] == name})
    hint = (f"; one exists in namespace(s) {elsewhere}: pass namespace= (or ray.init(namespace=...))"
            if elsewhere else "; the driver creates it (erl.trainers.verl.memory.create_memory, "
            "get_or_create_memory_actor or connect(create=True))")
    raise LookupError(f"no reflection memory actor {name!r} in Ray namespace {here!r}{hint}")


class RayMemoryClient:
    """ReflectionMemory's interface over a memory actor handle; picklable into Ray workers.

    `add`/`retrieve` are coroutines; the rest block. Every call waits at most `timeout_s`; a dead
    or unreachable actor raises RuntimeError naming it instead of hanging.
    """

    def __init__(self, handle: Any, name: str = DEFAULT_ACTOR_NAME, timeout_s: float = 60.0):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.handle, self.name, self.timeout_s = handle, name, float(timeout_s)

    @classmethod
    def connect(cls, name: str = DEFAULT_ACTOR_NAME, namespace: str | None = None,
                timeout_s: float = 60.0, create: bool = False, **kwargs: Any) -> RayMemoryClient:
        """A client of the named memory actor in `namespace` (default: this Ray job's).

        Without `create` the actor must exist: a process of another Ray job that leaves out
        the creator's namespace gets an error naming the namespaces where the actor lives,
        never a new, empty memory of its own. `create=True`: get_or_create_memory_actor(name,
        namespace, **kwargs) (max_size, top_k, detached)."""
        if create:
            return cls(get_or_create_memory_actor(name, namespace, **kwargs), name, timeout_s)
        if kwargs:
            raise TypeError(f"connect: {sorted(kwargs)} only apply with create=True")
        return cls(find_memory_actor(name, namespace), name, timeout_s)

    def _failure(self, exc: BaseException) -> RuntimeError:
        return RuntimeError(f"reflection memory actor {self.name!r} is dead or unreachable "
                            f"(waited up to {self.timeout_s:g}s): {type(exc).__name__}: {exc}")

    def _get(self, ref: Any) -> Any:
        import ray

        try:
            return ray.get(ref, timeout=self.timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            raise self._failure(exc) from exc

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        try:
            ref = self.handle.call.remote(method, *args, **kwargs)
        except ray.exceptions.RayActorError as exc:
            raise self._failure(exc) from exc
        return ref

    async def _acall(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        try:
            return await asyncio.wait_for(self._call(method, *args, **kwargs), self.timeout_s)
        except (ray.exceptions.RayActorError, asyncio.TimeoutError) as exc:
            raise self._failure(exc) from exc

    async def add(self, text: str, key: str, reward: float, step: int = 0, query: str = "") -> bool:
        return await self._acall("add", text, key, reward, step, query)

    async def retrieve(self, key: str, query: str = "", k: int | None = None) -> list[MemoryEntry]:
        return await self._acall("retrieve", key, query, k)

    def add_sync(self, text: str, key: str, reward: float, step: int = 0, query: str = "") -> bool:
        """`add`, blocking: for a driver whose batching must not depend on actor latency."""
        return self._get(self._call("add", text, key, reward, step, query))

    def retrieve_sync(self, key: str, query: str = "", k: int | None = None) -> list[MemoryEntry]:
        return self._get(self._call("retrieve", key, query, k))

    def replay(self, calls: list) -> None:
        """ReflectionMemory.replay on the actor: a worker's MemoryJournal calls, in one round trip."""
        self._get(self._call("replay", list(calls)))

    def stats(self) -> dict[str, float]:
        return self._get(self._call("stats"))

    def state_dict(self) -> dict:
        return self._get(self._call("state_dict"))

    def load_state_dict(self, state: dict) -> None:
        self._get(self._call("load_state_dict", state))

    def save(self, path: str) -> str:
        """Written by the actor, so `path` is on the actor's node (shared storage on clusters)."""
        return self._get(self._call("save", str(path)))

    def entries(self) -> list[MemoryEntry]:
        return self._get(self._call("entries"))

    def __len__(self) -> int:
        return self._get(self._call("__len__"))

    def __repr__(self) -> str:
        return f"RayMemoryClient(name={self.name!r}, timeout_s={self.timeout_s:g})"
