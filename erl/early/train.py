"""The Early Experience stages on the local trainer: masked next-token loss on the stage's chats.

    il    D_expert                -log p(a_i | s_i)
    iwm   world-model records     -log p(s_i^j | s_i, a_i^j); then `il` from its output (model.init_from)
    sr    sr + expert records     -log p(c_i^j . a_i | s_i), mixed with -log p(a_i | s_i)

Which files a stage reads is its config (configs/early/stage/*.yaml). The loss is erl.core's
`distill_nll_loss`, a token mean over each optimizer batch; the run layout, checkpoints,
resume and config checks are the local RL trainer's own (erl/trainers/local).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from erl.core.config import ConfigError, check_bools, check_ints, check_keys, check_numbers
from erl.core.losses import distill_nll_loss
from erl.core.types import TokenSample
from erl.early.data import files_digest, record_sample, stage_files, stage_records
from erl.fileio import atomic_write
from erl.models.chat import ChatTokenizer
from erl.models.warmstart import save_final
from erl.tracking import Tracker, read_metrics
from erl.trainers.local.batch import micro_batch_indices, pad_samples, response_logprobs
from erl.trainers.local.checkpoint import save_checkpoint
from erl.trainers.local.config import check_runtime
from erl.trainers.local.run import check_model_section, load_policy_model, pick_device, prepare_output, start_timeline
from erl.trainers.local.trainer import LocalTrainer, resolve_precision

TOP_KEYS = ("stage", "data", "seed", "resume", "model", "trainer")
STAGE_KEYS = ("name", "files")


@dataclass
class EarlyTrainConfig:
    epochs: int = 1
    total_steps: int | None = None  # stop after this many optimizer steps (resume continues); null: all epochs
    batch_size: int = 16  # records per optimizer step
    micro_batch_size: int = 4
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    max_length: int = 1024  # tokens per record; a longer record is an error, not a silent cut
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 1
    output_dir: str = "outputs/early"
    device: str = "auto"
    precision: str = "auto"
    loggers: list = field(default_factory=lambda: ["console"])
    project: str = "erl"
    progress: bool = True

    def __post_init__(self) -> None:
        check_ints("trainer", self, ("epochs", "batch_size", "micro_batch_size", "max_length"), 1)
        check_ints("trainer", self, ("warmup_steps", "save_every", "keep_checkpoints"), 0)
        steps = self.total_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ConfigError(f"trainer.total_steps must be null or an integer >= 1, got {steps!r}")
        check_numbers("trainer", self, ("lr", "weight_decay", "grad_clip"))
        if self.lr <= 0:
            raise ConfigError(f"trainer.lr must be > 0, got {self.lr}")
        check_runtime(self)
        check_bools("trainer", self, ("progress",))

    @classmethod
    def from_dict(cls, data: Any) -> EarlyTrainConfig:
        data = check_keys("trainer", data, cls)
        if "loggers" in data:
            data["loggers"] = list(data["loggers"])
        return cls(**data)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The records of optimizer step `step`: a fresh shuffle per epoch, a function of (seed, step)
    alone, so a resumed run sees exactly the batches the uninterrupted one would have."""
    per_epoch = math.ceil(n / batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = list(range(n))
    random.Random(f"early/{seed}/{epoch}").shuffle(order)
    return order[pos * batch_size:(pos + 1) * batch_size]


class StageTrainer:
    """Model, optimizer and step counter of one stage. What a checkpoint holds, and how it is
    restored, is the local RL trainer's rule (only trainable tensors; a missing one is an error)."""

    trainable_state = LocalTrainer.trainable_state
    load_state = LocalTrainer.load_state

    def __init__(self, model: Any, tokenizer: Any, samples: list[TokenSample], cfg: EarlyTrainConfig, seed: int):
        self.model, self.tokenizer, self.samples, self.cfg, self.seed = model, tokenizer, samples, cfg, seed
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(cfg.precision, self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ChatTokenizer(tokenizer).stop_ids[0]
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.memory = None
        self.step_count = self.cursor = 0
        planned = cfg.epochs * math.ceil(len(samples) / cfg.batch_size)
        self.total_steps = min(planned, cfg.total_steps) if cfg.total_steps else planned

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def trainer_state(self) -> dict:
        return {"step": self.step_count, "cursor": self.step_count, "seed": self.seed}

    def step(self) -> dict[str, float]:
        """One optimizer step: the token mean of -log p over the batch's target tokens."""
        rows = [self.samples[i] for i in batch_indices(len(self.samples), self.cfg.batch_size, self.seed,
                                                          self.step_count)]
        chunks = micro_batch_indices(rows, self.cfg.micro_batch_size)
        tokens = [sum(sum(rows[i].response_mask) for i in idx) for idx in chunks]
        total = max(sum(tokens), 1)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        nll_sum = 0.0
        for idx, n in zip(chunks, tokens):
            batch = pad_samples([rows[i] for i in idx], self.pad_id).to(self.device)
            with self.autocast():
                logp, _ = response_logprobs(self.model, batch, temperature=1.0)
            nll = distill_nll_loss(logp.float(), batch.response_mask)
            (nll * (n / total)).backward()  # micro-batch token means, weighted into the batch's token mean
            nll_sum += float(nll.detach()) * n / total
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], self.cfg.grad_clip or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        self.cursor = self.step_count
        return {"loss/nll": nll_sum, "loss/grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0],
                "tokens/trained": float(total), "rows": float(len(rows))}


def check_stage(stage: Any) -> dict:
    stage = check_keys("stage", stage, STAGE_KEYS)
    files = stage.get("files")
    if not isinstance(stage.get("name"), str) or not stage["name"]:
        raise ConfigError(f"stage.name must be a non-empty string, got {stage.get('name')!r}")
    if not isinstance(files, (list, tuple)) or not files or not all(isinstance(f, str) and f for f in files):
        raise ConfigError(f"stage.files must be a non-empty list of file names, got {files!r}")
    return {"name": stage["name"], "files": list(files)}


def to_samples(records: list[dict], tokenizer: Any, max_length: int) -> list[TokenSample]:
    chat = ChatTokenizer(tokenizer)
    samples = []
    for r in records:
        s = record_sample(r["messages"], chat)
        n = len(s.prompt_ids) + len(s.response_ids)
        if n > max_length:
            raise ConfigError(f"trainer.max_length={max_length}: a {r.get('kind')} record (task {r.get('task_id')}, "
                              f"step {r.get('step')}) has {n} tokens; raise trainer.max_length")
        samples.append(s)
    return samples


def train(cfg: dict) -> dict[str, float]:
    """Run one stage from a plain dict config (configs/early/train.yaml); returns the last metrics."""
    cfg = check_keys("erl-early train config", cfg, TOP_KEYS)
    for key in ("stage", "data", "model", "trainer"):
        if cfg.get(key) in (None, ""):
            raise ConfigError(f"erl-early train: `{key}` is not set")
    stage = check_stage(cfg["stage"])
    tcfg = EarlyTrainConfig.from_dict(cfg["trainer"])
    check_model_section(dict(cfg["model"]))
    records = stage_records(cfg["data"], stage["files"])
    # the data's digest joins the config: resuming on changed data is refused like a changed setting
    run_cfg = {**cfg, "stage": stage, "data_sha256": files_digest(stage_files(cfg["data"], stage["files"]))}
    out = Path(tcfg.output_dir)
    ckpt = prepare_output(run_cfg, out, cfg.get("resume", False), prog="erl-early train")
    seed = int(cfg.get("seed", 0))
    device = pick_device(tcfg.device)
    torch.manual_seed(seed)
    model, tok = load_policy_model(dict(cfg["model"]), device, seed)
    trainer = StageTrainer(model, tok, to_samples(records, tok, tcfg.max_length), tcfg, seed)
    start = -1
    if ckpt is not None:
        trainer.load_state(ckpt)
        start = trainer.step_count
    out.mkdir(parents=True, exist_ok=True)
    start_timeline(out, start)  # the same resume protocol as erl-train
    atomic_write(out / "config.json", json.dumps(run_cfg, indent=1, default=str))
    tracker = Tracker(out, tcfg.loggers, config=run_cfg, project=tcfg.project)
    if ckpt is not None:
        tracker.truncate_after(start)
    last: dict[str, float] = {}
    bar = tqdm(total=trainer.total_steps, initial=trainer.step_count, disable=not tcfg.progress, desc=stage["name"])
    while trainer.step_count < trainer.total_steps:
        last = trainer.step()
        k = trainer.step_count
        tracker.log(k, last)
        if (tcfg.save_every and k % tcfg.save_every == 0) or k == trainer.total_steps:
            save_checkpoint(out / "checkpoints", k, model_state=trainer.trainable_state(),
                            optimizer=trainer.optimizer, scheduler=trainer.scheduler,
                            trainer_state=trainer.trainer_state(), memory_state=None, config=run_cfg,
                            keep=tcfg.keep_checkpoints)
        bar.update(1)
        bar.set_postfix({"nll": f"{last['loss/nll']:.3f}"})
    bar.close()
    tracker.close()
    if not last:  # resumed at its end: nothing ran here; its last step's line says what it reached
        rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss/nll" in r]
        last = rows[-1] if rows else {}
    save_final(trainer.model, tok, out, {"stage": stage["name"], "files": stage["files"], "data": str(cfg["data"]),
                                         "data_sha256": run_cfg["data_sha256"], "steps": trainer.step_count,
                                         "model": cfg["model"], "trainer": asdict(tcfg)})
    return last
