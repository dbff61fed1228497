"""The ERL trainer on verl's Ray single controller.

verl's RayPPOTrainer.fit assumes one prompt -> n responses -> one reward per response,
drawn from a parquet dataloader. An ERL step has 3-4 training rows per episode with
different rewards (r1, r2) and its rollouts are multi-turn agent episodes, so this driver
keeps verl's workers and plumbing and replaces only the loop:

    tasks --ErlWorkflow (policy adapter -> verl rollout)--> Episodes
          --episode_to_samples--> DataProto (uid task|segment, segment_ids, rewards, masks)
          --erl.core.advantages--> advantages
          --actor workers: old log-probs, ref log-probs, update with ERL's loss (set_loss_fn)
          --verl weight sync--> rollout ; checkpoints: actor (verl) + cursor + memory
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from erl.core.metrics import episode_metrics, first_attempt_metrics, memory_store_metrics, sample_metrics
from erl.core.stream import next_tasks
from erl.fileio import atomic_write, check_torch_file, fsync_tree, move_aside
from erl.trainers.verl.config import STATE_FILE, Settings
from erl.trainers.verl.dataproto import (
    add_advantages,
    episodes_to_dataproto,
    pad_to_multiple,
    to_engine_tensordict,
)
from erl.trainers.verl.memory import load_memory, save_memory
from erl.workflow.erl_workflow import ErlWorkflow

# what the progress bar shows after each step (the rest goes to the trackers)
PROGRESS_KEYS = ("attempt1/success", "episode/success", "eval/success", "memory/size", "time/step")


def reduce_metrics(metrics: dict) -> dict[str, float]:
    """Worker metrics arrive as lists (per micro-batch and rank): their mean."""
    out = {}
    for k, v in (metrics or {}).items():
        vals = v if isinstance(v, (list, tuple)) else [v]
        nums = [float(getattr(x, "value", x)) for x in vals if isinstance(getattr(x, "value", x), (int, float))]
        if nums:
            out[k] = float(np.mean(nums))
    return out


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


class ErlVerlTrainer:
    """`workers` is the actor/rollout/ref side (erl.trainers.verl.group.VerlWorkers, or
    a stand-in with the same methods in CPU tests); `policy` the rollout adapter over it."""

    def __init__(self, settings: Settings, tokenizer: Any, workers: Any, policy: Any, memory: Any,
                 train_tasks: list[dict], val_tasks: list[dict], agent_factory, env_factory, tracker: Any = None,
                 runner: Any = None):
        self.s, self.cfg = settings, settings.cfg
        self.tokenizer, self.workers, self.policy, self.memory = tokenizer, workers, policy, memory
        self.train_tasks, self.val_tasks = train_tasks, val_tasks
        self.workflow = TimedWorkflow(agent_factory, env_factory, policy, settings.erl,
                                    memory if settings.erl.uses_memory else None,
                                    max_context_tokens=settings.trainer.max_context_tokens, runner=runner)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.out = Path(self.cfg["trainer"]["default_local_dir"])
        self.tracker = tracker
        self.step_count = 0
        self.cursor = 0

    # ---- data -------------------------------------------------------------------------
    def next_tasks(self) -> list[dict]:
        tasks, self.cursor = next_tasks(self.train_tasks, self.s.trainer.seed, self.cursor, self.s.tasks_per_step)
        return tasks

    # ---- rollouts ---------------------------------------------------------------------
    async def _collect(self, tasks: list[dict], n: int):
        return list(await asyncio.gather(*[self.workflow.run(t, f"{t['task_id']}:{k}") for t in tasks
                                           for k in range(n)]))

    def collect(self, tasks: list[dict]):
        self.workflow.step = self.step_count
        self.policy_seed(self.step_count)
        return asyncio.run(self._collect(tasks, self.s.erl.first_attempts_per_task))

    def policy_seed(self, step: int) -> None:
        if hasattr(self.policy, "seed"):
            self.policy.seed = self.s.trainer.seed * 1_000_003 + step

    async def _first_attempts(self, tasks: list[dict], temperature: float):
        return await asyncio.gather(*[self.workflow.attempt(t, "attempt1", temperature=temperature) for t in tasks])

    def evaluate(self) -> dict[str, float]:
        """First attempt only: no reflection, no memory (what the deployed model does)."""
        tasks = self.val_tasks[: self.s.trainer.eval_tasks]
        if not tasks:
            return {}
        self.policy_seed(10**6 + self.step_count)
        t0 = time.perf_counter()
        trajs = asyncio.run(self._first_attempts(tasks, self.s.trainer.eval_temperature))
        return {**first_attempt_metrics(list(trajs)), "time/eval": time.perf_counter() - t0}

    # ---- update -----------------------------------------------------------------------
    def update(self, data) -> dict[str, float]:
        """old log-probs -> ref log-probs -> one ERL update per ppo epoch; returns metrics."""
        actor = self.cfg["actor_rollout_ref"]["actor"]
        temperature = self.s.erl.temperature
        data, _ = pad_to_multiple(data, self.workers.dp_size)
        m: dict[str, float] = {}
        t0 = time.perf_counter()
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

    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        self.policy.reset_stats()
        episodes = self.collect(self.next_tasks())
        t1 = time.perf_counter()
        gen = self.policy.reset_stats()
        reflection_time = self.workflow.take_reflection_time()
        data, samples = episodes_to_dataproto(episodes, self.pad_id)
        add_advantages(data, norm_by_std=bool(self.cfg["algorithm"].get("norm_adv_by_std_in_grpo", True)),
                       distill_mode=self.s.erl.distill_mode)
        metrics = {**episode_metrics(episodes), **sample_metrics(samples)}
        adv = data.batch["advantages"]
        metrics["advantage/mean_abs"] = float(adv.abs().sum() / data.batch["response_mask"].sum().clamp(min=1))
        metrics.update(self.update(data))
        t2 = time.perf_counter()
        self.workers.sync_weights(self.step_count + 1)
        t3 = time.perf_counter()
        self.step_count += 1
        metrics.update({
            "time/rollout": t1 - t0, "time/reflection": reflection_time, "time/update": t2 - t1,
            "time/sync_weights": t3 - t2, "time/step": t3 - t0,
            "tokens/generated": float(gen["generated_tokens"]),
            "rollout/sequences": float(gen["sequences"]),
            # hf backend: generate calls a step; with short turns each costs ~max_new_tokens decode
            # steps whatever its size, so this count, not tokens, sets the rollout time
            "rollout/batches": float(gen.get("batches", 0)),
            "throughput/gen_tokens_per_s": gen["generated_tokens"] / max(t1 - t0, 1e-9),
            "throughput/update_tokens_per_s": metrics["tokens/total"] / max(t2 - t1, 1e-9),
        })
        if self.memory is not None:
            metrics.update(memory_store_metrics(self.memory.stats(), metrics))
        return metrics

    # ---- checkpoints ------------------------------------------------------------------
    def step_dir(self, step: int) -> Path:
        return self.out / f"global_step_{step}"

    def save_checkpoint(self) -> Path:
        """verl's layout: global_step_K/actor (model, optimizer, scheduler: the workers write
        it), plus erl_state.json (cursor) and erl_memory.json; everything is fsynced before the
        tracker file latest_checkpointed_iteration.txt is replaced (atomically, last), so an
        interrupted save leaves the previous checkpoint as the one a resume picks."""
        folder = self.step_dir(self.step_count)
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
            if not (path / STATE_FILE).is_file():
                raise FileNotFoundError(f"trainer.resume_from_path={path} is not an ERL checkpoint (no {STATE_FILE})")
            return path
        tracker = self.out / "latest_checkpointed_iteration.txt"
        if not tracker.is_file():
            return None
        path = self.step_dir(int(tracker.read_text().strip()))
        return path if (path / STATE_FILE).is_file() else None

    def start_timeline(self, resume: Path | None) -> int:
        """Make the output folder hold one timeline continuing from `resume` (None: from
        scratch). Checkpoints after it belong to the run this one replaces: they move to
        superseded/ (with a copy of metrics.jsonl; from scratch, the metrics move too), and the
        tracker file names the resumed step (or moves too, when the resumed checkpoint lies
        elsewhere), so a later resume_mode=auto cannot pick them. Returns the resumed step (-1: none)."""
        k = int(json.loads((resume / STATE_FILE).read_text())["step"]) if resume is not None else -1
        inside = resume is not None and resume.resolve().parent == self.out.resolve()
        later = [p for p in self.out.glob("global_step_*") if p.is_dir() and p.name.rpartition("_")[2].isdigit()
                 and int(p.name.rpartition("_")[2]) > k]
        metrics = self.out / self.s.trainer.metrics_file
        tracker = self.out / "latest_checkpointed_iteration.txt"
        later += [tracker] if tracker.is_file() and not inside else []
        later += [metrics] if metrics.is_file() and resume is None else []
        if later:
            dest = move_aside(later, self.out, f"after_step_{k}", copies=[metrics] if resume is not None else [])
            print(f"erl-verl: {[p.name for p in later]} belong to the run this one replaces; moved to {dest}")
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

    # ---- loop -------------------------------------------------------------------------
    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.tracker is not None:
            self.tracker.log(step, metrics)

    def fit(self) -> dict[str, float]:
        tr = self.cfg["trainer"]
        resume = self.find_resume()
        if resume is not None:
            self.load_checkpoint(resume)
            print(f"erl-verl: resumed from {resume} (step {self.step_count}, cursor {self.cursor})")
        self.workers.sync_weights(self.step_count)
        last: dict[str, float] = {}
        if self.step_count == 0 and tr.get("val_before_train", True):
            last = self.evaluate()
            self.log(0, last)
        total, save_freq, test_freq = self.s.total_steps, int(tr.get("save_freq", -1)), int(tr.get("test_freq", -1))
        bar = tqdm(total=total, initial=self.step_count, desc="erl-verl", disable=not self.s.trainer.progress)
        while self.step_count < total:
            metrics = self.step()
            k = self.step_count
            if (test_freq > 0 and k % test_freq == 0) or k == total:
                metrics.update(self.evaluate())
            if (save_freq > 0 and k % save_freq == 0) or (save_freq > 0 and k == total):
                t = time.perf_counter()
                self.save_checkpoint()
                metrics["time/save_checkpoint"] = time.perf_counter() - t
            metrics["training/global_step"] = float(k)
            self.log(k, metrics)
            last = metrics
            bar.update(1)
            bar.set_postfix({k: f"{metrics[k]:.3f}" for k in PROGRESS_KEYS if k in metrics}, refresh=False)
        bar.close()
        return last
