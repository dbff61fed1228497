"""The ERL trainer on verl's Ray single controller.

verl's RayPPOTrainer.fit assumes one prompt -> n responses -> one reward per response,
drawn from a parquet dataloader. An ERL step has 3-4 training rows per episode with
different rewards (r1, r2) and its rollouts are multi-turn agent episodes, so ERL keeps verl's
workers and plumbing and runs its own loop (erl.trainers.driver, shared with the local
trainer); this backend adds the update on verl's workers and verl's checkpoint layout:

    tasks --ErlWorkflow (policy adapter -> verl rollout)--> Episodes
          --episode_to_samples--> DataProto (uid task|segment, segment_ids, rewards, masks)
          --erl.core.advantages--> advantages
          --actor workers: old log-probs, ref log-probs, update with ERL's loss (set_loss_fn)
          --verl weight sync--> rollout ; checkpoints: actor (verl) + cursor + memory
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from erl.core.losses import needs_old_logprobs
from erl.core.types import TokenSample
from erl.fileio import atomic_write, check_torch_file, fsync_tree
from erl.tracking import samples_path
from erl.trainers.driver import ErlDriver, Schedule, start_timeline
from erl.trainers.verl.config import STATE_FILE, Settings, checkpoint_gap
from erl.trainers.verl.dataproto import (
    add_advantages,
    pad_to_multiple,
    samples_to_dataproto,
    to_engine_tensordict,
)
from erl.trainers.verl.memory import load_memory, save_memory
from erl.trainers.verl.worker_collect import collect_spec, merge_stats


def reduce_metrics(metrics: dict) -> dict[str, float]:
    """Worker metrics arrive as lists (per micro-batch and rank): their mean."""
    out = {}
    for k, v in (metrics or {}).items():
        vals = v if isinstance(v, (list, tuple)) else [v]
        nums = [float(getattr(x, "value", x)) for x in vals if isinstance(getattr(x, "value", x), (int, float))]
        if nums:
            out[k] = float(np.mean(nums))
    return out


class ErlVerlTrainer(ErlDriver):
    """The verl backend of the ERL driver (erl.trainers.driver). `workers` is the
    actor/rollout/ref side (erl.trainers.verl.group.VerlWorkers, or a stand-in with the same
    methods in CPU tests); `policy` the rollout adapter over it."""

    def __init__(self, settings: Settings, tokenizer: Any, workers: Any, policy: Any, memory: Any,
                 train_tasks: list[dict], val_tasks: list[dict], agent_factory, env_factory, tracker: Any = None,
                 runner: Any = None):
        self.s, self.cfg = settings, settings.cfg
        self.tokenizer, self.workers = tokenizer, workers
        tr = self.cfg["trainer"]
        save_freq, test_freq = int(tr.get("save_freq", -1)), int(tr.get("test_freq", -1))
        schedule = Schedule(total_steps=settings.total_steps, eval_every=max(test_freq, 0),
                            eval_before_train=bool(tr.get("val_before_train", True)),
                            save_every=max(save_freq, 0), save_last=save_freq > 0)
        super().__init__(policy=policy, erl=settings.erl, memory=memory, train_tasks=train_tasks,
                         val_tasks=val_tasks[: settings.trainer.eval_tasks], agent_factory=agent_factory,
                         env_factory=env_factory, seed=settings.trainer.seed, tasks_per_step=settings.tasks_per_step,
                         schedule=schedule, out=Path(tr["default_local_dir"]),
                         metrics_file=settings.trainer.metrics_file,
                         norm_adv_by_std=bool(self.cfg["algorithm"].get("norm_adv_by_std_in_grpo", True)),
                         eval_temperature=settings.trainer.eval_temperature,
                         max_context_tokens=settings.trainer.max_context_tokens, runner=runner,
                         progress=settings.trainer.progress, tracker=tracker,
                         log_episodes=settings.trainer.log_episodes)
        self.memory = memory  # checkpoints save and restore it in every mode (None in a bare benchmark)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.in_workers = settings.trainer.collect_in_workers
        self.spec = collect_spec(self.cfg["erl"], settings.trainer.max_context_tokens, settings.trainer.runner,
                                 settings.trainer.memory_actor if memory is not None else None)
        self.workers_reflection_time = 0.0

    # ---- episodes in the workers (erl_trainer.collect_in_workers) ------------------------
    def run_episodes(self, items: list[tuple[dict, str]]) -> list:
        if not self.in_workers:
            return super().run_episodes(items)
        return self.run_in_workers("collect", [{"task": t, "uid": uid} for t, uid in items])

    def run_attempts(self, tasks: list[dict], temperature: float) -> list:
        if not self.in_workers:
            return super().run_attempts(tasks, temperature)
        return self.run_in_workers("eval", [{"task": t} for t in tasks], temperature)

    def take_reflection_time(self) -> float:
        t, self.workers_reflection_time = self.workers_reflection_time, 0.0
        return super().take_reflection_time() + t

    def run_in_workers(self, phase: str, items: list[dict], temperature: float | None = None) -> list:
        """The workers run the phase on their engines; their counters join the policy's, which the
        step's metrics read (generated tokens, sequences, generate calls and seconds)."""
        meta = {"spec": self.spec, "phase": phase, "seed": self.policy.seed, "step": self.step_count,
                "temperature": temperature}
        results, per_worker = self.workers.collect(items, meta)
        # what each worker's episodes did on their copy of the memory, on the job's memory, in rank
        # order (erl.memory.MemoryJournal): the memory after a step does not depend on the workers' timing
        for stats in per_worker:
            if stats.get("memory_calls"):
                self.memory.replay(stats["memory_calls"])
        merged = merge_stats(per_worker)
        for k in self.policy.stats:
            self.policy.stats[k] += type(self.policy.stats[k])(merged.get(k, 0))
        if phase == "collect":
            self.workers_reflection_time += merged["reflection_seconds"]
        return results

    # ---- update -----------------------------------------------------------------------
    def update(self, samples: list[TokenSample], advantages: Any = None) -> dict[str, float]:
        """The step's rows as verl's DataProto with their advantages (the driver's; computed
        from the rows when called alone), then the workers' update."""
        data = samples_to_dataproto(samples, self.pad_id)
        add_advantages(data, advantages=self.advantages(samples) if advantages is None else advantages)
        return self.update_data(data)

    def after_update(self, step: int) -> dict[str, float]:
        t = time.perf_counter()
        self.workers.sync_weights(step)  # the rollout samples the next step from the new weights
        return {"time/sync_weights": time.perf_counter() - t}

    def update_data(self, data) -> dict[str, float]:
        """old log-probs -> ref log-probs -> one ERL update per ppo epoch; returns metrics."""
        actor = self.cfg["actor_rollout_ref"]["actor"]
        temperature = self.s.erl.temperature
        data, _ = pad_to_multiple(data, self.workers.dp_size)
        m: dict[str, float] = {}
        t0 = time.perf_counter()
        # one epoch over one mini-batch (mini_batch_size=rows below) is on-policy: no forward pass
        if needs_old_logprobs(int(actor["ppo_epochs"])):
            data.batch["old_log_probs"] = self.workers.compute_log_prob(
                to_engine_tensordict(data, temperature=temperature, calculate_entropy=False, compute_loss=False), data)
        t1 = time.perf_counter()
        if self.s.loss.uses_kl:
            data.batch["ref_log_prob"] = self.workers.compute_ref_log_prob(
                to_engine_tensordict(data, temperature=temperature, calculate_entropy=False, compute_loss=False),
                data)
        t2 = time.perf_counter()
        rows = len(data)
        # the seq-mean loss modes divide by global_batch_size: count only rows that train a token
        # (pad_to_multiple's fillers train none); entropy only when the loss or the user needs it
        trained_rows = max(int((data.batch["response_mask"].sum(-1) > 0).sum()), 1)
        entropy = bool(actor.get("calculate_entropy")) or self.s.loss.entropy_coeff != 0
        td = to_engine_tensordict(
            data, temperature=temperature, calculate_entropy=entropy, distillation_use_topk=False,
            distillation_only=False, global_batch_size=trained_rows, mini_batch_size=rows,
            epochs=int(actor["ppo_epochs"]),
            seed=int(actor.get("data_loader_seed", 42)), dataloader_kwargs={"shuffle": False}, compute_loss=True)
        m.update({f"actor/{k}": v for k, v in reduce_metrics(self.workers.update_actor(td)).items()})
        t3 = time.perf_counter()
        m.update({"time/old_log_prob": t1 - t0, "time/ref_log_prob": t2 - t1, "time/update_actor": t3 - t2})
        return m

    # ---- checkpoints ------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.out / f"global_step_{step}"

    def checkpoints_after(self, step: int) -> list[Path]:
        return [p for p in self.out.glob("global_step_*") if p.is_dir() and p.name.rpartition("_")[2].isdigit()
                and int(p.name.rpartition("_")[2]) > step]

    def save_checkpoint(self) -> Path:
        """verl's layout: global_step_K/actor (model, optimizer, scheduler: the workers write
        it), plus erl_state.json (cursor) and erl_memory.json; everything is fsynced before the
        tracker file latest_checkpointed_iteration.txt is replaced (atomically, last), so an
        interrupted save leaves the previous checkpoint as the one a resume picks."""
        folder = self.checkpoint_path(self.step_count)
        keep = self.cfg["trainer"].get("max_actor_ckpt_to_keep")
        self.workers.save_checkpoint(str(folder / "actor"), self.step_count, keep)
        atomic_write(folder / STATE_FILE, json.dumps({"step": self.step_count, "cursor": self.cursor,
                                                     "seed": self.s.trainer.seed}))
        save_memory(self.memory, folder)
        fsync_tree(folder)
        atomic_write(self.out / "latest_checkpointed_iteration.txt", str(self.step_count))
        return folder

    def find_resume(self) -> Path | None:
        tr = self.cfg["trainer"]
        mode = tr.get("resume_mode", "auto")
        if mode == "disable":
            return None
        if mode == "resume_path":
            path = Path(str(tr.get("resume_from_path")))
            gap = checkpoint_gap(path)
            if gap:
                raise FileNotFoundError(f"trainer.resume_from_path={path} {gap}")
            return path
        tracker = self.out / "latest_checkpointed_iteration.txt"
        if not tracker.is_file():
            return None
        path = self.checkpoint_path(int(tracker.read_text().strip()))
        return path if (path / STATE_FILE).is_file() else None

    def start_timeline(self, resume: Path | None) -> int:
        """The driver's resume protocol on verl's layout, from `resume` (None: from scratch).
        Besides the later global_step_K folders, the tracker file moves aside when the resumed
        checkpoint lies elsewhere, and from scratch the metrics move too; the tracker file then
        names the resumed step, so a later resume_mode=auto cannot pick a replaced checkpoint.
        Returns the resumed step (-1: none)."""
        k = int(json.loads((resume / STATE_FILE).read_text())["step"]) if resume is not None else -1
        inside = resume is not None and resume.resolve().parent == self.out.resolve()
        tracker = self.out / "latest_checkpointed_iteration.txt"
        also = [tracker] if tracker.is_file() and not inside else []
        also += [p for p in (self.metrics_path, samples_path(self.metrics_path)) if p.is_file() and resume is None]
        start_timeline(self.out, k, [*self.checkpoints_after(k), *also],
                       self.metrics_path if resume is not None else None)
        if inside and tracker.is_file() and tracker.read_text().strip() != str(k):
            atomic_write(tracker, str(k))
        return k

    def load_checkpoint(self, folder: Path) -> None:
        state = json.loads((folder / STATE_FILE).read_text())
        # verl's checkpoint manager unpickles with weights_only=False: refuse code before it gets there
        for f in sorted((folder / "actor").rglob("*")):
            if f.is_file() and f.suffix in (".pt", ".pth", ".bin", ".pkl"):
                check_torch_file(f)
        self.workers.load_checkpoint(str(folder / "actor"))
        self.step_count, self.cursor = int(state["step"]), int(state["cursor"])
        load_memory(self.memory, folder)

    # ---- loop ------------------------------------------------------------------------
    def fit(self, started: float | None = None) -> dict[str, float]:
        resume = self.find_resume()
        if resume is not None:
            self.load_checkpoint(resume)
            print(f"erl-verl: resumed from {resume} (step {self.step_count}, cursor {self.cursor})")
        self.workers.sync_weights(self.step_count)
        return super().fit(started)
