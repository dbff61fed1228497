"""One reflection memory for the whole job: a named Ray actor, saved with each checkpoint.

The driver creates it before any rollout; every ErlWorkflow (and any rollout worker
process that looks it up by name) talks to the same actor. Its state travels inside verl's
`global_step_K/` checkpoint folder as `erl_memory.json`, next to the actor weights and
the data cursor, so a resume restores exactly what the policy had learned to rely on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from erl.core.config import ErlConfig
from erl.fileio import atomic_write

MEMORY_FILE = "erl_memory.json"


class BlockingMemory:
    """The memory client with blocking `add` / `retrieve` for the driver's episodes.

    A local actor answers in about a millisecond. Awaiting it would let the batching policy
    send a batch while some episodes are still waiting on the actor, so which requests share
    a batch (and its sampling seed) would depend on the actor's latency; blocking keeps
    batches, and a resumed run's samples, deterministic. Everything else is the client's.
    """

    def __init__(self, client: Any):
        self.client = client

    def add(self, text: str, key: str, reward: float, step: int = 0, query: str = "") -> bool:
        return self.client.add_sync(text, key, reward, step, query)

    def retrieve(self, key: str, query: str = "", k: int | None = None) -> list:
        return self.client.retrieve_sync(key, query, k)

    def __getattr__(self, name: str) -> Any:  # stats, state_dict, load_state_dict, entries, handle
        return getattr(self.client, name)

    def __len__(self) -> int:
        return len(self.client)


def create_memory(erl: ErlConfig, name: str, namespace: str | None = None) -> Any:
    """The job's memory (a named Ray actor), or None when the mode uses no memory (rlvr,
    no_memory, no_reflection): those runs must not read or write it, not even by accident.
    Other processes reach the same actor with connect_memory."""
    if not erl.uses_memory:
        return None
    from erl.memory.ray_memory import RayMemoryClient, get_or_create_memory_actor

    handle = get_or_create_memory_actor(name, namespace, max_size=erl.memory_size, top_k=erl.memory_top_k)
    return BlockingMemory(RayMemoryClient(handle, name))


def connect_memory(erl: ErlConfig, name: str | None) -> Any:
    """The job's memory seen from another process of the job (a rollout worker running episodes,
    collect_in_workers), or None where the mode uses none or no actor is named: the actor that
    create_memory made, never a new one."""
    if not erl.uses_memory or not name:
        return None
    from erl.memory.ray_memory import RayMemoryClient

    return BlockingMemory(RayMemoryClient.connect(name))


def save_memory(memory: Any, step_dir: str | Path) -> Path | None:
    """Write the memory's state into a checkpoint folder (driver side, atomically)."""
    if memory is None:
        return None
    folder = Path(step_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / MEMORY_FILE, json.dumps(memory.state_dict()))
    return folder / MEMORY_FILE


def load_memory(memory: Any, step_dir: str | Path) -> bool:
    """Restore the memory from a checkpoint folder; False when it holds none (a run that
    started without memory, or a checkpoint from before the first save)."""
    path = Path(step_dir) / MEMORY_FILE
    if memory is None or not path.is_file():
        return False
    memory.load_state_dict(read_memory_state(path))
    return True


def read_memory_state(path: Path) -> dict:
    """The state in a checkpoint's memory file, checked: ConfigError naming the file if it is
    not JSON or not a ReflectionMemory state (the trainer's config check reads it before Ray)."""
    from erl.core.config import ConfigError
    from erl.memory import ReflectionMemory

    try:
        state = json.loads(Path(path).read_text())
        ReflectionMemory().load_state_dict(state)
    except (ValueError, OSError) as exc:  # JSONDecodeError and a bad state are both ValueErrors
        raise ConfigError(f"{path}: not a reflection memory state: {exc}") from None
    return state
