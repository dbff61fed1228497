"""The job's one reflection memory: created by the driver, reached by name from two Ray
worker processes, saved into a verl checkpoint folder and restored on resume."""

import asyncio
import json
import os

import pytest

ray = pytest.importorskip("ray")

from erl.core.config import ErlConfig
from erl.trainers.verl.memory import (
    MEMORY_FILE,
    connect_memory,
    create_memory,
    load_memory,
    save_memory,
)


@pytest.fixture(scope="module")
def ray_local():
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(num_cpus=2, include_dashboard=False, namespace="erl_test_verl_memory", log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - ports, /dev/shm: say why and skip
            pytest.skip(f"ray failed to start: {type(exc).__name__}: {exc}")
    yield
    if started:
        ray.shutdown()


def _worker_class():
    @ray.remote(num_cpus=0)
    class RolloutWorker:  # what a rollout worker does with the name from erl_trainer.memory_actor
        def __init__(self, name):
            from erl.memory.ray_memory import RayMemoryClient

            self.memory = RayMemoryClient.connect(name)

        def pid(self):
            return os.getpid()

        def add(self, text, key):
            return asyncio.run(self.memory.add(text, key, 1.0, 7, "grid K - Q"))

        def retrieve(self, key):
            return [e.text for e in asyncio.run(self.memory.retrieve(key, "grid K - Q", 1))]

    return RolloutWorker


def test_driver_memory_shared_by_two_workers_and_checkpointed(ray_local, tmp_path):
    erl = ErlConfig(mode="erl", memory_size=8, memory_top_k=1)
    memory = create_memory(erl, "job_memory")
    w = _worker_class()
    a, b = w.remote("job_memory"), w.remote("job_memory")
    assert len({ray.get(a.pid.remote()), ray.get(b.pid.remote()), os.getpid()}) == 3
    assert ray.get(a.add.remote("go around the Q tiles", "frozenlake")) is True
    assert ray.get(b.retrieve.remote("frozenlake")) == ["go around the Q tiles"]  # B sees A's write
    assert memory.stats()["size"] == 1  # and so does the driver
    other = connect_memory(erl, "job_memory")  # another process of the job (a rollout worker): the same actor
    assert [e.text for e in other.retrieve("frozenlake", "grid", 1)] == ["go around the Q tiles"]
    assert connect_memory(erl, None) is None
    # The driver's episodes call it without yielding to the event loop (no await): batches of
    # generation requests cannot depend on how fast the actor answers.
    assert [e.text for e in memory.retrieve("frozenlake", "grid", 1)] == ["go around the Q tiles"]

    step_dir = tmp_path / "global_step_10"
    path = save_memory(memory, step_dir)
    assert path == step_dir / MEMORY_FILE and json.loads(path.read_text())  # plain JSON in the checkpoint
    ray.get(b.add.remote("written after the checkpoint", "sokoban"))
    assert memory.stats()["size"] == 2
    assert load_memory(memory, step_dir) is True  # resume: back to what the checkpoint held
    assert memory.stats()["size"] == 1
    assert [e.text for e in memory.entries()] == ["go around the Q tiles"]
    assert load_memory(memory, tmp_path / "global_step_0") is False  # no memory file: nothing to restore
    ray.kill(memory.handle)


@pytest.mark.parametrize("mode", ["rlvr", "no_memory", "no_reflection"])
def test_modes_without_memory_get_none(mode):
    # No Ray needed: these runs must not create, read or write a memory.
    assert create_memory(ErlConfig(mode=mode), "unused") is None
    assert connect_memory(ErlConfig(mode=mode), "unused") is None
    assert save_memory(None, "/nonexistent") is None and load_memory(None, "/nonexistent") is False
