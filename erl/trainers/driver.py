"""The ERL driver: the loop around erl.core, written once and shared by every trainer backend.

A step: tasks from the endless task stream -> ErlWorkflow episodes (n first attempts per
task) -> training rows (erl.core.samples) -> advantages (erl.core.advantages) -> the
backend's update -> the step's metrics (erl.core.metrics). `fit` runs steps with the eval
and save cadence, a time budget and a stop after too many skipped updates; the function
`start_timeline` (given a backend's later checkpoints) is the resume protocol's last part
(later checkpoints move to superseded/, never deleted).

A backend subclasses ErlDriver, calls `ErlDriver.__init__`, and writes only what is its own:

    update(samples, advantages) -> dict   one policy update on the step's rows (advantages:
                                          one scalar per row, computed here). A backend that
                                          refuses a non-finite update returns "train/skipped": 1.0
                                          and counts self.skipped_steps / self.consecutive_skips
    save_checkpoint() -> Path             weights, optimizer and self.step_count / self.cursor
                                          (the task stream's position) / memory, atomically
    checkpoint_path(step) -> Path         the folder of step's checkpoint (named in errors)
and loads its checkpoint (setting step_count and cursor) before `fit`. Optional hooks:
rollout_context() (local: bf16 autocast), after_update(step) -> metrics (verl: weight sync
to the rollout workers), system_metrics(), and where a phase's episodes run: run_episodes,
run_attempts and take_reflection_time (verl's collect_in_workers: in the rollout workers). The policy counts GEN_STATS in `policy.stats`;
one with a `seed` attribute (a remote sampler) gets each step's seed there too.

Backends: erl.trainers.local.trainer.LocalTrainer (one process, autograd) and
erl.trainers.verl.trainer.ErlVerlTrainer (verl's Ray workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import sys
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from erl.core.advantages import segment_advantages
from erl.core.metrics import (
    advantage_mean_abs,
    episode_metrics,
    episode_record,
    first_attempt_metrics,
    memory_store_metrics,
    sample_metrics,
    updated_tokens,
)
from erl.core.samples import episode_to_samples
from erl.core.stream import EVAL_SEED_OFFSET, next_tasks, step_seed
from erl.core.types import Episode, TokenSample
from erl.fileio import move_aside
from erl.progress import bar_postfix, gather_with_bar, log, step_summary, task_bar
from erl.tracking import samples_path
from erl.trainers.heap import FullPasses, frozen_heap, settled_heap
from erl.workflow.erl_workflow import ErlWorkflow

GEN_STATS = ("generated_tokens", "generate_seconds", "batches", "sequences")  # every policy counts these
# The rollout engine's counters (erl.rollout.engine), as step metrics. Decode steps: each a forward's
# latency in a row, and an episode's turns, reflection and second attempt are one chain (preset=gpu
# FrozenLake: ERL 176 a step, RLVR 64; docs/gpu/decode_kernels). The seconds split the host's time in
# the engine: queueing prefills, decode steps with their delivery, and of those the wait for the GPU;
# time/rollout less the engine's generate seconds is the episodes' own code.
ENGINE_STATS = {"decode_steps": "rollout/decode_steps", "prefill_forwards": "rollout/prefill_forwards",
                "prefill_seconds": "time/rollout_prefill", "decode_seconds": "time/rollout_decode",
                "gpu_wait_seconds": "time/rollout_gpu_wait"}


class NonFiniteStepError(RuntimeError):
    """Too many updates in a row were refused for a non-finite loss or gradient."""


def reset_policy(policy: Any) -> None:
    """A policy with a cache (the rollout engine) back to a new one's state (`reset`), before each
    phase: a resumed process has no slot history from earlier phases, and resume must reproduce
    the next step exactly."""
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset()


async def gather_all(coros: list) -> list:
    return list(await asyncio.gather(*coros))


def run_to_end(coro: Coroutine[Any, Any, Any], context: Any = None) -> Any:
    """asyncio.run(coro) inside `context`, also from a thread whose event loop is running: verl's
    worker is a Ray async actor (its update_weights is a coroutine), whose methods run on the
    actor's loop, where asyncio.run refuses (so does a notebook's). There the coroutine gets a loop
    of its own in a thread, on this thread's CUDA device, and `context` is entered in that thread:
    torch's current device and autocast are per thread, and a rollout copy with bf16 linears and
    fp32 norms (erl.rollout.merged.cast_linears) runs only under its autocast."""
    device = torch.cuda.current_device() if torch.cuda.is_available() else None

    def run() -> Any:
        if device is not None:  # the caller's device (a no-op in the caller's own thread)
            torch.cuda.set_device(device)
        with context or contextlib.nullcontext():
            return asyncio.run(coro)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="erl-phase") as pool:
        return pool.submit(run).result()


def run_phase(policy: Any, gathered: Coroutine[Any, Any, list], context: Any = None) -> list:
    """One phase's episodes (a coroutine gathering them) the way every phase runs, in the driver
    or in a rollout worker: the policy fresh (reset_policy), inside `context` (the local trainer's
    bf16 autocast), the heap from before frozen out of full GC passes."""
    reset_policy(policy)
    with frozen_heap():
        return run_to_end(gathered, context)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Schedule:
    """When `fit` evaluates, saves and stops. Evaluation also runs after the last step."""

    total_steps: int
    eval_every: int = 0  # 0: only after the last step
    eval_before_train: bool = True  # step 0: the model before any update
    save_every: int = 0  # 0: none by count
    save_last: bool = True  # also after the last step (and on a time-budget or skip stop)
    save_every_minutes: float = 0.0  # also when this long has passed since the last save; 0: off
    time_budget_s: float = 0.0  # > 0: save and stop once a step ends past this (chained runs)
    max_consecutive_skips: int = 0  # refused updates in a row before the run stops; 0: never


class TimedWorkflow(ErlWorkflow):
    """ErlWorkflow that records when reflections were being written, so a step's time can be
    split into attempts and reflection although episodes interleave."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reflect_spans: list[tuple[float, float]] = []

    async def reflect(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return await super().reflect(*args, **kwargs)
        finally:
            self.reflect_spans.append((start, time.perf_counter()))

    def take_reflection_time(self) -> float:
        """Wall time during which at least one reflection was in flight (union of spans)."""
        total, end = 0.0, float("-inf")
        for a, b in sorted(self.reflect_spans):
            if b > end:
                total += b - max(a, end)
                end = b
        self.reflect_spans = []
        return total


class ErlDriver:
    """Collection, evaluation, step metrics, seeding and the training loop of an ERL run."""

    def __init__(self, *, policy: Any, erl: Any, memory: Any, train_tasks: list[dict], val_tasks: list[dict],
                 agent_factory: Any, env_factory: Any, seed: int, tasks_per_step: int, schedule: Schedule,
                 out: Path, metrics_file: str = "metrics.jsonl", norm_adv_by_std: bool = True,
                 eval_temperature: float = 0.0, max_context_tokens: int = 2048, runner: Any = None,
                 progress: bool = True, tracker: Any = None, log_episodes: int = 0):
        self.policy, self.erl = policy, erl
        self.memory = memory if erl.uses_memory else None
        self.train_tasks, self.val_tasks = train_tasks, list(val_tasks)
        self.workflow = TimedWorkflow(agent_factory, env_factory, policy, erl, self.memory,
                                      max_context_tokens=max_context_tokens, runner=runner)
        self.seed, self.tasks_per_step, self.schedule = seed, tasks_per_step, schedule
        self.out, self.metrics_path = Path(out), Path(out) / metrics_file
        self.norm_adv_by_std, self.eval_temperature = norm_adv_by_std, eval_temperature
        self.progress, self.tracker = progress, tracker  # tracker: erl.tracking.Tracker or the like
        self.log_episodes = log_episodes  # episodes a step written as text (tracker.log_samples)
        self.step_count = 0
        self.cursor = 0  # position in the endless, epoch-shuffled task stream
        self.skipped_steps = 0  # updates refused because the loss or gradient was not finite
        self.consecutive_skips = 0
        self.gc_passes = FullPasses.install()
        self.heap: Any = None  # a training loop's SettledHeap (fit's): each step ends by settling it

    # ---- backend hooks (see the module docstring) ---------------------------------------
    def update(self, samples: list[TokenSample], advantages: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def save_checkpoint(self) -> Path:
        raise NotImplementedError

    def checkpoint_path(self, step: int) -> Path:
        raise NotImplementedError

    def rollout_context(self):
        return contextlib.nullcontext()

    def after_update(self, step: int) -> dict[str, float]:
        return {}

    def system_metrics(self) -> dict[str, float]:
        return {"system/peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux

    # ---- sampling ----------------------------------------------------------------------
    def seed_sampling(self, seed: int) -> None:
        """Every generator the rollout may draw from: this process's, and a remote policy's."""
        seed_all(seed)
        if hasattr(self.policy, "seed"):
            self.policy.seed = seed

    def next_tasks(self) -> list[dict]:
        tasks, self.cursor = next_tasks(self.train_tasks, self.seed, self.cursor, self.tasks_per_step)
        return tasks

    def advantages(self, samples: list[TokenSample]) -> torch.Tensor:
        """One ERL advantage per row (GRPO per task and segment; RAFT or none for distill rows)."""
        return segment_advantages(samples, norm_by_std=self.norm_adv_by_std, distill_mode=self.erl.distill_mode)

    def run_phase(self, gathered: Coroutine[Any, Any, list]) -> list:
        """Run one phase's episodes (a coroutine gathering them) as every phase runs (run_phase),
        in the trainer's rollout context."""
        return run_phase(self.policy, gathered, self.rollout_context())

    def collect(self, tasks: list[dict]) -> list[Episode]:
        """n episodes per task (2n first attempts in rlvr mode: the workflow's config says)."""
        self.workflow.step = self.step_count
        n = self.erl.first_attempts_per_task
        return self.run_episodes([(task, f"{task['task_id']}:{k}") for task in tasks for k in range(n)])

    def run_episodes(self, items: list[tuple[dict, str]]) -> list[Episode]:
        """The workflow's episode for each (task, uid), in this process (a backend may run them
        elsewhere: the verl trainer's collect_in_workers)."""
        return self.run_phase(gather_all([self.workflow.run(task, uid) for task, uid in items]))

    def run_attempts(self, tasks: list[dict], temperature: float) -> list:
        """One first attempt per task at `temperature` (the eval), in this process."""
        attempts = [self.workflow.attempt(task, "attempt1", temperature=temperature) for task in tasks]
        with task_bar(len(tasks), "eval", self.progress) as bar:
            return self.run_phase(gather_with_bar(attempts, bar))

    def take_reflection_time(self) -> float:
        """Wall time of the last collect during which a reflection was being written."""
        return self.workflow.take_reflection_time()

    def evaluate(self, tasks: list[dict] | None = None, temperature: float | None = None) -> dict[str, float]:
        """First attempt only: no reflection, no memory: what the deployed model does."""
        tasks = self.val_tasks if tasks is None else tasks
        if not tasks:
            return {}
        t = self.eval_temperature if temperature is None else temperature
        self.seed_sampling(step_seed(self.seed, EVAL_SEED_OFFSET + self.step_count))
        t0 = time.perf_counter()
        trajs = self.run_attempts(tasks, t)
        return {**first_attempt_metrics(trajs), "time/eval": time.perf_counter() - t0}

    # ---- one step ----------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One training step; returns its metrics."""
        self.seed_sampling(step_seed(self.seed, self.step_count))  # sampling depends only on (seed, step)
        before = dict(self.policy.stats)  # the policy's counters run on over the steps
        gc_mark = self.gc_passes.totals()
        t0 = time.perf_counter()
        episodes = self.collect(self.next_tasks())
        t1 = time.perf_counter()
        gen = {k: self.policy.stats[k] - before[k] for k in GEN_STATS}
        if getattr(self.policy, "graphs", None) is not None:  # the engine's new CUDA graphs: fewer as shapes recur
            gen["graphs_recorded"] = self.policy.stats["graphs_recorded"] - before["graphs_recorded"]
        # the engine's own split of the rollout (absent from other policies' stats)
        gen.update({k: self.policy.stats[k] - before[k] for k in ENGINE_STATS if k in before})
        reflection_time = self.take_reflection_time()
        samples = [row for ep in episodes for row in episode_to_samples(ep)]
        metrics = {**episode_metrics(episodes), **sample_metrics(samples)}
        if samples:
            adv = self.advantages(samples)
            metrics["advantage/mean_abs"] = advantage_mean_abs(adv.tolist(), samples)
            metrics.update(self.update(samples, adv))
        t2 = time.perf_counter()
        metrics.update(self.after_update(self.step_count + 1))
        if self.heap is not None:  # what the step left: collected, the rest frozen (erl.trainers.heap)
            metrics.update(self.heap.settle())
        t3 = time.perf_counter()
        self.step_count += 1
        gc_passes, gc_seconds = (now - then for now, then in zip(self.gc_passes.totals(), gc_mark))
        if self.log_episodes and self.tracker is not None:  # resume truncates these with the metrics
            self.tracker.log_samples(self.step_count, [episode_record(e) for e in episodes[:self.log_episodes]])
        metrics.update({
            "time/rollout": t1 - t0, "time/reflection": reflection_time, "time/update": t2 - t1, "time/step": t3 - t0,
            "tokens/generated": float(gen["generated_tokens"]),
            "rollout/sequences": float(gen["sequences"]),
            # generate calls a step: with short turns each costs ~max_new_tokens decode steps
            # whatever its size, so this count, not tokens, sets the rollout time
            "rollout/batches": float(gen["batches"]),
            "time/rollout_engine": gen["generate_seconds"],  # the policy's own; the rest is the episodes' code
            "throughput/gen_tokens_per_s": gen["generated_tokens"] / gen["generate_seconds"]
            if gen["generate_seconds"] > 0 else 0.0,
            "throughput/update_tokens_per_s": updated_tokens(metrics) / max(t2 - t1, 1e-9),
            "train/skipped_steps": float(self.skipped_steps),
            # the garbage collector's full passes during the step (erl.trainers.heap)
            "perf/gc_full_passes": float(gc_passes),
            "perf/gc_full_seconds": gc_seconds,
            **self.system_metrics(),
        })
        if "graphs_recorded" in gen:
            metrics["rollout/graphs_recorded"] = float(gen["graphs_recorded"])
        metrics.update({name: float(gen[k]) for k, name in ENGINE_STATS.items() if k in gen})
        if self.memory is not None:
            metrics.update(memory_store_metrics(self.memory.stats(), metrics))
        return metrics

    # ---- the loop ----------------------------------------------------------------------
    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.tracker is not None:
            self.tracker.log(step, metrics)
        log.info(step_summary(step, self.schedule.total_steps, metrics))

    def too_many_skips(self) -> bool:
        limit = self.schedule.max_consecutive_skips
        return bool(limit) and self.consecutive_skips >= limit

    def fit(self, started: float | None = None) -> dict[str, float]:
        """Train from self.step_count to the schedule's total. `started`: the monotonic() time
        the time budget counts from (model loading and evals count too). Each step's metrics
        are logged before its checkpoint is saved: a crash in between loses the checkpoint, and
        the resumed run's tracker drops the line and recomputes it, so no step goes unlogged."""
        sch = self.schedule
        started = monotonic() if started is None else started
        last: dict[str, float] = {}
        if self.step_count == 0 and sch.eval_before_train:
            log.info("step 0: eval before training on %d tasks", len(self.val_tasks))
            last = self.evaluate()
            self.log(0, last)
        saved_at = monotonic()
        bar = tqdm(total=sch.total_steps, initial=self.step_count, disable=not self.progress, desc="erl",
                   unit="step", file=sys.stderr)
        with settled_heap(self):
            while self.step_count < sch.total_steps:
                metrics = self.step()
                k, final = self.step_count, self.step_count == sch.total_steps
                if (sch.eval_every and k % sch.eval_every == 0) or final:
                    metrics.update(self.evaluate())
                self.log(k, metrics)
                last = metrics
                out_of_time = bool(sch.time_budget_s) and monotonic() - started > sch.time_budget_s
                stop = self.too_many_skips()
                overdue = bool(sch.save_every_minutes) and monotonic() - saved_at >= 60 * sch.save_every_minutes
                if (sch.save_every and k % sch.save_every == 0) or (sch.save_last and (final or out_of_time or stop)) \
                        or overdue:
                    self.save_checkpoint()
                    saved_at = monotonic()
                if stop:
                    raise NonFiniteStepError(
                        f"{self.consecutive_skips} consecutive steps had a non-finite loss or gradient (up to step {k}); "
                        f"none of them reached the weights. Last good checkpoint: {self.checkpoint_path(k)}; "
                        f"the batches' facts: {self.out / 'nonfinite.jsonl'}")
                bar.update(1)
                bar.set_postfix(bar_postfix(metrics))
                if out_of_time and not final:  # a chained run: the next call resumes from here
                    log.info("time budget %.0f s reached after step %d; continue with resume", sch.time_budget_s, k)
                    break
        bar.close()
        return last


def start_timeline(out: Path, step: int, later: list[Path], metrics: Path | None) -> Path | None:
    """Make `out` hold one timeline that continues from `step` (-1: from scratch). `later`, the
    checkpoints after `step`, belong to the run this one replaces (a resume from an older
    checkpoint): they move to out/superseded/ with a copy of `metrics`, so that a later resume
    can neither pick them nor lose them. Returns the archive folder (None: nothing moved)."""
    if not later:
        return None
    copies = [metrics, samples_path(metrics)] if metrics is not None else []
    dest = move_aside(later, out, f"after_step_{step}", copies=copies)
    print(f"erl: resuming from step {step}: {[p.name for p in later]} belong to the run this one replaces; "
          f"moved to {dest}", file=sys.stderr)
    return dest
