"""The local ERL trainer: one process, PyTorch + transformers, CPU (fp32) or one GPU (bf16).

Per step: ErlWorkflow episodes for a batch of tasks (n per task) -> rows -> GRPO
advantages per (task, segment) -> one ERL actor loss (PPO-clip + consolidation) -> AdamW.
Every piece of math comes from erl.core; this file only orchestrates.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from erl.core.advantages import DISTILL_ID
from erl.core.config import ErlConfig
from erl.core.logprobs import logprob_gap
from erl.core.losses import erl_actor_terms, loss_units, needs_old_logprobs
from erl.core.metrics import episode_metrics, sample_metrics
from erl.core.types import SEGMENT_IDS, TokenSample
from erl.progress import gather_with_bar, task_bar
from erl.rollout.build import build_policy
from erl.rollout.device import to_device
from erl.trainers.driver import ErlDriver, Schedule
from erl.trainers.local.batch import micro_batch_indices, pad_samples, response_logprobs
from erl.trainers.local.checkpoint import (
    CheckpointError,
    save_checkpoint,
    set_rng_state,
)
from erl.trainers.local.config import LocalTrainerConfig
from erl.trainers.local.numerics import (
    grads_finite,
    log_nonfinite,
    nonfinite_facts,
)
from erl.workflow.erl_workflow import ErlWorkflow


def cpu_has_amx() -> bool:
    """AMX tiles: the CPU feature that makes bf16 matmuls fast (torch has no public query)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on CUDA and on CPUs with AMX tiles, else fp32. AVX512-BF16 alone is not
    enough: without AMX, bf16 autocast made the LoRA update 1.7x and generation 1.5x slower
    than fp32 (benchmarks/local_update.py on a 2-core Xeon); with AMX it was 3-4x faster."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_has_amx() and torch.backends.mkldnn.is_available() else "fp32"


class LocalTrainer(ErlDriver):
    """The local backend of the ERL driver (erl.trainers.driver): holds the model, optimizer
    and reference model, and updates the policy with autograd; the driver runs the steps."""

    def __init__(self, model: Any, tokenizer: Any, train_tasks: list[dict], erl: ErlConfig,
                 trainer: LocalTrainerConfig, agent_factory, env_factory, memory: Any = None,
                 seed: int = 0, ref_model: Any = None, runner: Any = None, val_tasks: list[dict] = ()):
        if not train_tasks:
            raise ValueError("LocalTrainer: no training tasks")
        self.model, self.tokenizer, self.ref_model = model, tokenizer, ref_model
        self.cfg = trainer
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(trainer.precision, self.device)
        self.loss = trainer.loss(erl)
        policy = build_policy(model, tokenizer, trainer.rollout_engine, max_batch_size=trainer.gen_batch_size,
                              compile=trainer.rollout_compile, merge_lora=trainer.rollout_merge_lora,
                              cuda_graphs=trainer.rollout_cuda_graphs,
                              decode_attention=trainer.rollout_decode_attention, regions=trainer.rollout_regions,
                              autocast_dtype=self.autocast_dtype)
        schedule = Schedule(total_steps=trainer.total_steps, eval_every=trainer.eval_every,
                            save_every=trainer.save_every, save_every_minutes=trainer.save_every_minutes,
                            time_budget_s=trainer.time_budget_s, max_consecutive_skips=trainer.max_consecutive_skips)
        super().__init__(policy=policy, erl=erl, memory=memory, train_tasks=train_tasks, val_tasks=val_tasks,
                         agent_factory=agent_factory, env_factory=env_factory, seed=seed,
                         tasks_per_step=trainer.tasks_per_step, schedule=schedule, out=Path(trainer.output_dir),
                         norm_adv_by_std=trainer.norm_adv_by_std, eval_temperature=trainer.eval_temperature,
                         max_context_tokens=trainer.max_context_tokens, runner=runner, progress=trainer.progress,
                         log_episodes=trainer.log_episodes)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=trainer.lr, weight_decay=trainer.weight_decay)
        warm = max(trainer.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.checkpoint_config: dict = {}  # the run's config, written into every checkpoint

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def autocast(self):
        """bf16 autocast keeps fp32 master weights (lr 1e-6 updates vanish in bf16 weights)."""
        if self.autocast_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def rollout_context(self):
        return self.autocast()

    # ---- evaluation with reflection ---------------------------------------------------
    def evaluate_with_reflection(self, tasks: list[dict], temperature: float | None = None) -> dict[str, float]:
        """Attempt 1, then one reflection and attempt 2 where it failed (no memory): how much
        a reflection still helps the model, the gap consolidation is meant to close."""
        t = self.eval_temperature if temperature is None else temperature
        start = time.perf_counter()
        cfg = replace(self.erl, mode="no_memory", temperature=t)
        wf = ErlWorkflow(policy=self.policy, config=cfg, runner=self.workflow.runner)
        runs = [wf.run(task, f"{task['task_id']}:eval") for task in tasks]
        with task_bar(len(tasks), "eval (with reflection)", self.progress) as bar:
            episodes = self.run_phase(gather_with_bar(runs, bar))
        m = episode_metrics(episodes)
        return {"eval/success": m["attempt1/success"], "eval/success_after_reflection": m["episode/success"],
                "eval/reflection_rate": m["reflection/rate"],
                "eval/reflection_parse_fail_rate": m["reflection/parse_fail_rate"],
                "time/eval": time.perf_counter() - start}  # as evaluate() reports it

    # ---- update -----------------------------------------------------------------------
    def _logprobs(self, model, rows: list[TokenSample], with_entropy: bool = False):
        batch = pad_samples(rows, self.policy.pad_id).to(self.device)
        with self.autocast():
            logp, entropy = response_logprobs(model, batch, self.erl.temperature, with_entropy)
        return batch, logp, entropy

    def micro_batches(self, samples: list[TokenSample], adv: torch.Tensor) -> tuple[list[list[int]], list[int],
                                                                                   torch.Tensor, list[bool]]:
        """(row indices of each micro-batch, each row's kind, which rows carry no gradient, which
        micro-batches are skipped). One epoch: rows with no gradient (a tied GRPO group) go into
        micro-batches of their own that skip the forward and backward passes, with the same
        gradient and metrics (test)."""
        segments = torch.tensor([SEGMENT_IDS[s.segment] for s in samples])
        idle = (self.loss.idle_rows(adv.cpu(), segments) if self.cfg.ppo_epochs == 1
                else torch.zeros(len(samples), dtype=torch.bool))
        kinds = [2 if idle[i] else int(segments[i] == DISTILL_ID) for i in range(len(samples))]
        chunks = micro_batch_indices(samples, self.cfg.micro_batch_size, kinds, self.cfg.micro_batch_tokens)
        return chunks, kinds, idle, [bool(idle[idx].all()) for idx in chunks]

    def update(self, samples: list[TokenSample], adv: torch.Tensor | None = None) -> dict[str, float]:
        cfg = self.cfg
        if adv is None:  # called alone (tests, benchmarks): the driver's advantages
            adv = self.advantages(samples)
        chunks, kinds, idle, skip = self.micro_batches(samples, adv)
        # the allocator's retries (a cudaFree of its cache, then a synchronised retry): a suspect for
        # the ERL update's outlier steps, 3.5-4.7 s against ~1.3 s (docs/gpu/verl_in_workers)
        retries = self._alloc_retries()
        old: dict[int, torch.Tensor] = {}
        ref: dict[int, torch.Tensor] = {}
        need_old = needs_old_logprobs(cfg.ppo_epochs)
        with torch.no_grad():
            for c, idx in enumerate(chunks):
                rows = [samples[i] for i in idx]
                if need_old:
                    old[c] = self._logprobs(self.model, rows)[1].float()
                if self.loss.uses_kl and self.ref_model is not None:
                    ref[c] = self._logprobs(self.ref_model, rows)[1].float()
        # Gradient accumulation: each micro-batch weighs by its share of the step's loss units
        # (trained tokens, or rows), so the summed gradient is the step's aggregate, as in verl.
        sizes = [loss_units([sum(samples[i].response_mask) for i in idx], self.loss.loss_agg_mode) for idx in chunks]
        weights = [n / max(sum(sizes), 1) for n in sizes]
        # rows of sft distillation with a trained token: known here, so the loss need not ask the GPU
        distill = [self.loss.distill_mode == "sft" and any(kinds[i] == 1 and sum(samples[i].response_mask) > 0
                                                            for i in idx) for idx in chunks]
        totals: dict[str, Any] = {}
        self.model.train()
        bad: dict | None = None  # facts about the first non-finite micro-batch or gradient
        # the log-prob gap to the rollout, over the policy-gradient rows this update runs (first epoch;
        # rows of a tied group are skipped, so a step with nothing to learn reports none)
        gaps: list[tuple] = []
        for epoch in range(cfg.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            # Nothing in this loop waits for the GPU (no float(), no check read back), so the host
            # queues the next micro-batch while the GPU runs this one; the checks are read once after.
            checks: list[tuple] = []  # (chunk, loss, gradient finite, batch, log-probs): facts if not finite
            for c, idx in enumerate(chunks):
                rows = [samples[i] for i in idx]
                if skip[c]:  # loss and gradient exactly 0: only its metrics' zeros
                    batch = pad_samples(rows, self.policy.pad_id)
                    zeros = torch.zeros(batch.responses.shape)
                    _, metrics = erl_actor_terms(zeros, zeros, adv[idx].cpu().float(), batch.response_mask,
                                                 batch.segment_ids, **self.loss.kwargs())
                    for k, v in metrics.items():
                        totals[k] = totals.get(k, 0.0) + float(v) * weights[c]
                    continue
                batch, logp, entropy = self._logprobs(self.model, rows, with_entropy=self.loss.entropy_coeff != 0)
                logp = logp.float()
                if epoch == 0 and kinds[idx[0]] == 0:  # distillation rows were sampled under another prompt
                    gaps.append(logprob_gap(logp, batch.rollout_logprobs, batch.response_mask))
                loss, metrics = erl_actor_terms(
                    logp, old.get(c), to_device(adv[idx], self.device, adv.dtype), batch.response_mask,
                    batch.segment_ids, ref_logprobs=ref.get(c), entropy=entropy, has_distill=distill[c],
                    **self.loss.kwargs())
                # a non-finite loss poisons the gradient it adds to: the step is then refused as a whole
                (loss * weights[c]).backward()
                checks.append((c, loss.detach(), grads_finite(self.model), batch, logp.detach()))
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v * weights[c]
            if checks:
                finite = torch.stack([ok.to(loss.device) & torch.isfinite(loss) for _, loss, ok, _, _ in checks]).cpu()
                if not bool(finite.all()):
                    c, loss, _, batch, logp = checks[int((~finite).to(torch.int8).argmax())]
                    where = "grad" if bool(torch.isfinite(loss)) else "loss"
                    rows = [samples[i] for i in chunks[c]]
                    bad = nonfinite_facts(where, rows, batch, logp, adv[chunks[c]], loss, self.precision)
                    bad["chunk"] = c
                    if where == "grad":
                        bad["nonfinite_grads"] = [n for n, p in self.model.named_parameters()
                                                  if p.grad is not None and not torch.isfinite(p.grad).all()][:8]
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            if all(skip):  # AdamW must still see zero, not absent, gradients
                for p in trainable:
                    p.grad = torch.zeros_like(p)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip or float("inf"))
            if bad is None and not torch.isfinite(grad_norm):  # finite per micro-batch, overflow in the sum
                bad = {"where": "grad_norm", "grad_norm": float(grad_norm), "precision": self.precision}
            if bad is not None:
                # The step never reaches the weights (nor the optimizer's moments or the schedule).
                self.optimizer.zero_grad(set_to_none=True)
                break
            self.optimizer.step()
            self.scheduler.step()
        if bad is not None:
            return self._skip(bad, samples, chunks)
        self.consecutive_skips = 0
        totals = {f"loss/{k}": float(v) / cfg.ppo_epochs for k, v in totals.items()}
        if gaps:  # read back once
            total, most, count = (torch.stack(t).double().cpu() for t in zip(*gaps))
            totals["rollout/logprob_gap_mean"] = float(total.sum() / count.sum().clamp(min=1))
            totals["rollout/logprob_gap_max"] = float(most.max())
        totals["loss/grad_norm"] = float(grad_norm)
        totals["lr"] = self.scheduler.get_last_lr()[0]
        totals["train/skipped"] = 0.0
        # rows that carried no gradient and were not run (their tokens leave the update's throughput)
        totals["train/idle_rows"] = float(idle.sum())
        totals["train/idle_tokens"] = sample_metrics([s for s, i in zip(samples, idle) if i]).get("tokens/total", 0.0)
        totals["train/micro_batches"] = float(sum(not k for k in skip) * cfg.ppo_epochs)  # forward + backward passes
        if retries is not None:
            totals["perf/update_alloc_retries"] = float(self._alloc_retries() - retries)
        return totals

    def _alloc_retries(self) -> int | None:
        if self.device.type != "cuda":
            return None
        return int(torch.cuda.memory_stats(self.device).get("num_alloc_retries", 0))

    def _skip(self, facts: dict, samples: list[TokenSample], chunks: list[list[int]]) -> dict[str, float]:
        """Count a skipped step and record why, with a replay of the batch under other numerics."""
        self.skipped_steps += 1
        self.consecutive_skips += 1
        facts.update(step=self.step_count, skipped_steps=self.skipped_steps, consecutive=self.consecutive_skips)
        if "chunk" in facts:
            facts["replay"] = self.replay_numerics([samples[i] for i in chunks[facts["chunk"]]])
        log_nonfinite(Path(self.cfg.output_dir), facts)
        return {"train/skipped": 1.0, "lr": self.scheduler.get_last_lr()[0]}

    def replay_numerics(self, rows: list[TokenSample]) -> dict[str, bool]:
        """Forward + backward of one micro-batch under each precision / attention kernel, to
        tell which numerics produce the non-finite value (the cause, not only the symptom)."""
        results: dict[str, bool] = {}
        impl = getattr(self.model.config, "_attn_implementation", None)
        saved = self.precision
        for precision in ("bf16", "fp32"):
            for attn in dict.fromkeys([impl, "eager"]):
                try:
                    if attn and hasattr(self.model, "set_attn_implementation"):
                        self.model.set_attn_implementation(attn)
                    self.precision = precision
                    self.model.zero_grad(set_to_none=True)
                    batch, logp, _ = self._logprobs(self.model, rows)
                    (logp.float() * batch.response_mask).sum().backward()
                    finite = bool(torch.isfinite(logp).all()) and all(
                        bool(torch.isfinite(p.grad).all()) for p in self.model.parameters() if p.grad is not None)
                    results[f"{precision}/{attn}"] = finite
                except Exception as exc:  # noqa: BLE001 - a diagnosis must never end the run
                    results[f"{precision}/{attn}"] = f"error: {exc}"[:200]
        self.precision = saved
        if impl and hasattr(self.model, "set_attn_implementation"):
            self.model.set_attn_implementation(impl)
        self.model.zero_grad(set_to_none=True)
        return results

    def system_metrics(self) -> dict[str, float]:
        m = super().system_metrics()
        if self.device.type == "cuda":
            m["system/gpu_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return m

    # ---- state ------------------------------------------------------------------------
    def trainable_state(self) -> dict:
        """Only what training changes: LoRA adapters alone when LoRA is on."""
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()
                if k in names or len(names) == sum(1 for _ in self.model.parameters())}

    def trainer_state(self) -> dict:
        return {"step": self.step_count, "cursor": self.cursor, "seed": self.seed,
                "skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips}

    def load_state(self, ckpt: dict) -> None:
        # strict=False because a checkpoint holds only what trains (LoRA adapters, say); a trainable
        # tensor it lacks would silently keep its fresh value, so that is refused like an extra one
        missing, unexpected = self.model.load_state_dict(ckpt["model"], strict=False)
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        lost = sorted(trainable.intersection(missing))
        if unexpected or lost:
            raise CheckpointError(f"checkpoint does not match this model: parameters it lacks {lost[:5]}, "
                                  f"parameters the model lacks {unexpected[:5]}")
        if ckpt.get("optim") is None:  # weights only (load_checkpoint(training=False)): evaluation
            return
        self.optimizer.load_state_dict(ckpt["optim"]["optimizer"])
        self.scheduler.load_state_dict(ckpt["optim"]["scheduler"])
        st = ckpt["trainer_state"]
        self.step_count, self.cursor = int(st["step"]), int(st["cursor"])
        self.skipped_steps = int(st.get("skipped_steps", 0))
        self.consecutive_skips = int(st.get("consecutive_skips", 0))
        if ckpt.get("memory") is not None and self.memory is not None:
            self.memory.load_state_dict(ckpt["memory"])
        if ckpt.get("rng") is not None:
            set_rng_state(ckpt["rng"])

    # ---- checkpoints (the driver's adapter; the format: erl.trainers.local.checkpoint) ---
    def checkpoint_path(self, step: int) -> Path:
        return self.out / "checkpoints" / f"step_{step}"

    def save_checkpoint(self) -> Path:
        return save_checkpoint(self.out / "checkpoints", self.step_count, model_state=self.trainable_state(),
                               optimizer=self.optimizer, scheduler=self.scheduler, trainer_state=self.trainer_state(),
                               memory_state=self.memory.state_dict() if self.memory is not None else None,
                               config=self.checkpoint_config, keep=self.cfg.keep_checkpoints)
