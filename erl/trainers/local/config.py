"""The local trainer's settings (`trainer:` section), validated before any work starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from erl.core.config import ConfigError, check_keys

LOGGERS = ("console", "tensorboard", "wandb")


@dataclass
class LocalTrainerConfig:
    total_steps: int = 20
    tasks_per_step: int = 8
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    micro_batch_size: int = 8
    ppo_epochs: int = 1
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0
    kl_kind: str = "low_var_kl"
    norm_adv_by_std: bool = True
    loss_agg_mode: str = "token-mean"
    eval_every: int = 5  # 0: only at the end
    eval_tasks: int = 32
    eval_temperature: float = 0.0
    save_every: int = 10  # 0: only at the end
    keep_checkpoints: int = 1
    output_dir: str = "outputs/run"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; weights stay fp32)
    gen_batch_size: int = 64
    max_context_tokens: int = 2048
    loggers: list = field(default_factory=lambda: ["console", "tensorboard"])
    project: str = "erl"  # wandb project
    progress: bool = True

    def __post_init__(self) -> None:
        ints = ("total_steps", "tasks_per_step", "micro_batch_size", "ppo_epochs", "gen_batch_size",
                "max_context_tokens", "eval_tasks")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"trainer.{name} must be an integer >= 1, got {v!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "keep_checkpoints"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"trainer.{name} must be an integer >= 0, got {v!r}")
        for name in ("lr", "weight_decay", "grad_clip", "clip_low", "clip_high", "kl_coef", "eval_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < math.inf):
                raise ConfigError(f"trainer.{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ConfigError(f"trainer.lr must be > 0, got {self.lr}")
        if self.loss_agg_mode not in ("token-mean", "seq-mean-token-mean"):
            raise ConfigError(f"trainer.loss_agg_mode must be token-mean or seq-mean-token-mean, got {self.loss_agg_mode!r}")
        if self.kl_kind not in ("k1", "k2", "low_var_kl"):
            raise ConfigError(f"trainer.kl_kind must be k1, k2 or low_var_kl, got {self.kl_kind!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"trainer.precision must be auto, fp32 or bf16, got {self.precision!r}")
        bad = [x for x in self.loggers if x not in LOGGERS]
        if bad:
            raise ConfigError(f"trainer.loggers: unknown {bad}; choose from {LOGGERS}")
        if not (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:")):
            raise ConfigError(f"trainer.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @classmethod
    def from_dict(cls, data: Any) -> LocalTrainerConfig:
        data = check_keys("trainer", {k: v for k, v in dict(data or {}).items() if k != "name"}, cls)
        if "loggers" in data:
            data["loggers"] = list(data["loggers"])
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)
