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

MEMORY_FILE = "erl_memory.json"


def create_memory(erl: ErlConfig, name: str, namespace: str | None = None) -> Any:
    """The job's memory client, or None when the mode uses no memory (rlvr, no_memory,
    no_reflection): those runs must not read or write it, not even by accident."""
    if not erl.uses_memory:
        return None
    from erl.memory.ray_memory import RayMemoryClient, get_or_create_memory_actor

    handle = get_or_create_memory_actor(name, namespace, max_size=erl.memory_size, top_k=erl.memory_top_k)
    return RayMemoryClient(handle, name)


def save_memory(memory: Any, step_dir: str | Path) -> Path | None:
    """Write the memory's state into a checkpoint folder (driver side, atomically)."""
    if memory is None:
        return None
    folder = Path(step_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (MEMORY_FILE + ".tmp")
    tmp.write_text(json.dumps(memory.state_dict()))
    tmp.replace(folder / MEMORY_FILE)
    return folder / MEMORY_FILE


def load_memory(memory: Any, step_dir: str | Path) -> bool:
    """Restore the memory from a checkpoint folder; False when it holds none (a run that
    started without memory, or a checkpoint from before the first save)."""
    path = Path(step_dir) / MEMORY_FILE
    if memory is None or not path.is_file():
        return False
    memory.load_state_dict(json.loads(path.read_text()))
    return True
