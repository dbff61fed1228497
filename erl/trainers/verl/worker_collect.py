"""Episodes run inside each hf rollout worker, next to its engine (`erl_trainer.collect_in_workers`).

The other way (`collect_in_workers=false`): the driver runs every episode and sends the workers'
engines one batch of requests at a time (erl.trainers.verl.rollout.WorkerGroupPolicy), so each turn
of each attempt waits for the whole batch, ~10 lockstep generate calls a step. The local trainer
instead lets an episode's next request reach its engine the moment the episode is ready. Here (the
default with the hf rollout) each worker runs its share of the step's episodes that way, with the
same workflow (erl.trainers.driver.TimedWorkflow) on its own engine, and returns them to the driver,
which trains on them as before: on two H200, 35-42k generated tokens/s against 25-28k from the
driver (docs/gpu/workers_journal).

What a worker needs to build the workflow travels as a plain dict (`spec`): the `erl:` config,
the context limit, the runner's import path and the reflection memory's actor name (every worker
connects to the job's one memory actor). A worker does not write to that actor while its episodes
run: it collects on a private copy of the memory (erl.memory.MemoryJournal) and returns the calls its
episodes made, which the driver replays on the actor in rank order. Were the workers to write as they
go, which reflection one of them retrieved would depend on how fast another had been, and a resumed
run, or two runs of one config, would sample other episodes. So a step is a function of its seed and
the workers' count: with one worker it is the driver's collect, token for token.
"""

from __future__ import annotations

import json
from typing import Any

from erl.memory import MemoryJournal
from erl.trainers.driver import GEN_STATS, TimedWorkflow, gather_all, run_phase, seed_all

# The policy's counters that a step reports (GEN_STATS): summed over the workers, except the
# seconds, which overlap (the slowest worker's)
SUMMED = tuple(k for k in GEN_STATS if k != "generate_seconds")


def worker_rank() -> int:
    """This worker's rank in verl's process group (0 outside one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def collect_spec(erl_section: dict, max_context_tokens: int, runner: str | None, memory_actor: str | None) -> dict:
    """What a worker needs to build the driver's workflow (JSON-able)."""
    return {"erl": dict(erl_section), "max_context_tokens": int(max_context_tokens), "runner": runner,
            "memory_actor": memory_actor}


def merge_stats(per_worker: list[dict]) -> dict:
    """One step's counters from each worker's: tokens and sequences add up, seconds overlap."""
    out: dict[str, float] = {k: sum(float(s.get(k, 0)) for s in per_worker) for k in SUMMED}
    for k in ("generate_seconds", "reflection_seconds"):
        out[k] = max((float(s.get(k, 0.0)) for s in per_worker), default=0.0)
    return out


class WorkerCollector:
    """Runs a phase's episodes (or eval attempts) on `policy`, the worker's rollout engine.
    `memory`: the reflection memory to use instead of connecting to the spec's actor (tests);
    `context`: makes the context every phase runs inside (the hf rollout copy's autocast)."""

    def __init__(self, policy: Any, memory: Any = None, context: Any = None):
        self.policy, self.memory = policy, memory
        self.context = context  # makes the context (autocast) every phase runs inside
        self.workflow: Any = None
        self.shared: Any = None  # the job's memory (its actor's client), which a phase starts from
        self._spec = ""

    def workflow_for(self, spec: dict) -> Any:
        key = json.dumps(spec, sort_keys=True, default=str)
        if key != self._spec:
            from erl.core.config import ErlConfig
            from erl.envs.registry import make_env
            from erl.trainers.verl.memory import connect_memory
            from erl.workflow.factories import chat_agent_for, load_runner

            erl = ErlConfig.from_dict(spec["erl"])
            memory = self.memory if self.memory is not None else connect_memory(erl, spec.get("memory_actor"))
            self.shared = memory if erl.uses_memory else None
            self.workflow = TimedWorkflow(chat_agent_for, make_env, policy=self.policy, config=erl, memory=None,
                                          max_context_tokens=spec["max_context_tokens"],
                                          runner=load_runner(spec.get("runner")))
            self._spec = key
        return self.workflow

    def run(self, items: list, meta: dict) -> tuple[list, dict]:
        """items: {"task", "uid"} (phase "collect": an Episode each) or {"task"} (phase "eval": a
        first attempt at meta["temperature"]), None for the driver's padding (None back). meta:
        spec, phase, seed, step. Returns the results in order and this worker's counters, with the
        calls its episodes made on the memory (`memory_calls`, for the driver to replay) if any."""
        wf = self.workflow_for(meta["spec"])
        wf.step = int(meta.get("step", 0))
        wf.memory = None  # an eval's first attempts use no memory
        if meta["phase"] == "collect":
            if self.shared is not None:
                wf.memory = MemoryJournal(self.shared.state_dict())
            coros = [wf.run(it["task"], it["uid"]) for it in items if it is not None]
        elif meta["phase"] == "eval":
            coros = [wf.attempt(it["task"], "attempt1", temperature=meta["temperature"]) for it in items if it is not None]
        else:
            raise ValueError(f"WorkerCollector: unknown phase {meta['phase']!r}")
        if meta.get("seed") is not None:
            # each worker its own draws: two workers' engines start a phase alike, so two tasks with
            # the same grid in the same row would otherwise sample the same tokens (one worker: the
            # driver's seed, as its own collect would use)
            seed_all(int(meta["seed"]) + 1_000_003 * worker_rank())
        before = dict(self.policy.stats)
        done = iter(run_phase(self.policy, gather_all(coros), self.context() if self.context else None))
        stats = {k: self.policy.stats[k] - before[k] for k in GEN_STATS}
        stats["reflection_seconds"] = wf.take_reflection_time()
        if wf.memory is not None:
            stats["memory_calls"] = wf.memory.calls
        return [None if it is None else next(done) for it in items], stats
