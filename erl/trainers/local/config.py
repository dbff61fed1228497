"""The local trainer's settings (`trainer:` section), validated before any work starts."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from erl.core.config import ConfigError, check_bools, check_ints, check_keys, check_numbers
from erl.core.losses import LossSettings, loss_setting_errors
from erl.rollout.compiling import check_mode

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
    micro_batch_tokens: int = 0  # > 0: also at most this many padded tokens a micro-batch (verl's dynamic bsz)
    ppo_epochs: int = 1
    # the loss's keys, under LossSettings' names and with its defaults (declared there)
    clip_low: float = LossSettings.clip_low
    clip_high: float = LossSettings.clip_high
    clip_ratio_c: float = LossSettings.clip_ratio_c  # dual-clip: a token with A < 0 loses at most -A * this
    kl_coef: float = LossSettings.kl_coef
    kl_kind: str = LossSettings.kl_kind
    entropy_coeff: float = LossSettings.entropy_coeff  # loss -= entropy_coeff * entropy (exploration when > 0)
    norm_adv_by_std: bool = True
    loss_agg_mode: str = LossSettings.loss_agg_mode
    eval_every: int = 5  # 0: only at the end
    eval_tasks: int = 32
    eval_temperature: float = 0.0
    save_every: int = 10  # 0: only at the end (and by save_every_minutes)
    save_every_minutes: float = 5.0  # also save when this long has passed since the last save; 0: off
    keep_checkpoints: int = 1
    output_dir: str = "outputs/run"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; weights stay fp32)
    gen_batch_size: int = 64
    rollout_engine: str = "auto"  # auto | engine | hf (erl.rollout.build.build_policy: auto = the engine where supported)
    rollout_compile: bool | str = False  # torch.compile the engine's decode step: true (mode default) or a mode
    rollout_cuda_graphs: bool = True  # CUDA: the engine replays its eager decode step as CUDA graphs
    rollout_decode_attention: str = "efficient"  # CUDA: the engine's decode attention kernel, efficient | flex
    rollout_regions: bool = False  # CUDA: each layer's work around attention compiled (erl.rollout.regions)
    rollout_merge_lora: bool = True  # the engine decodes with a LoRA-merged copy (one more copy of the weights)
    max_context_tokens: int = 2048
    loggers: list = field(default_factory=lambda: ["console", "tensorboard"])
    project: str = "erl"  # wandb project
    progress: bool = True
    max_consecutive_skips: int = 3  # non-finite steps in a row before the run stops (0: never)
    time_budget_s: float = 0.0  # > 0: save and stop cleanly once a step ends past this (chained GPU calls)
    log_episodes: int = 2  # episodes a step written as text to <output_dir>/samples.jsonl (0: none)

    def __post_init__(self) -> None:
        check_ints("trainer", self, ("total_steps", "tasks_per_step", "micro_batch_size", "ppo_epochs",
                                     "gen_batch_size", "max_context_tokens", "eval_tasks"), 1)
        check_ints("trainer", self, ("warmup_steps", "eval_every", "save_every", "keep_checkpoints",
                                     "max_consecutive_skips", "log_episodes", "micro_batch_tokens"), 0)
        check_numbers("trainer", self, ("lr", "weight_decay", "grad_clip", "eval_temperature", "time_budget_s",
                                        "save_every_minutes"))
        if self.lr <= 0:
            raise ConfigError(f"trainer.lr must be > 0, got {self.lr}")
        loss_errors = loss_setting_errors(
            clip_low=self.clip_low, clip_high=self.clip_high, clip_ratio_c=self.clip_ratio_c, kl_coef=self.kl_coef,
            kl_kind=self.kl_kind, loss_agg_mode=self.loss_agg_mode, entropy_coeff=self.entropy_coeff)
        if loss_errors:  # the keys of this section carry the loss's own names
            raise ConfigError("; ".join(f"trainer.{k} must be {v}" for k, v in loss_errors.items()))
        check_runtime(self)
        check_bools("trainer", self, ("rollout_cuda_graphs", "rollout_merge_lora", "rollout_regions", "norm_adv_by_std",
                                     "progress"))
        if not isinstance(self.rollout_compile, bool):
            try:
                check_mode(str(self.rollout_compile))
            except ValueError as exc:
                raise ConfigError(f"trainer.rollout_compile must be true, false or a torch.compile mode: {exc}") from None
        if self.rollout_decode_attention not in ("efficient", "flex"):
            raise ConfigError(f"trainer.rollout_decode_attention must be efficient or flex, "
                              f"got {self.rollout_decode_attention!r}")
        if self.engine_cuda_kernels and (self.rollout_engine == "hf" or self.rollout_compile):
            raise ConfigError(f"trainer.{self.engine_cuda_kernels[0]} is a kernel of the rollout engine's eager forward "
                              "(in its CUDA graphs): not with rollout_engine=hf or rollout_compile")
        if self.rollout_engine not in ("auto", "engine", "hf"):
            raise ConfigError(f"trainer.rollout_engine must be auto, engine or hf, got {self.rollout_engine!r}")

    @property
    def engine_cuda_kernels(self) -> list[str]:
        """The settings asked for that choose the rollout engine's CUDA-only kernels (FlexAttention
        decode, compiled regions): each is refused without CUDA, with hf or with rollout_compile."""
        return [s for s, on in (("rollout_decode_attention=flex", self.rollout_decode_attention == "flex"),
                                ("rollout_regions=true", self.rollout_regions is True)) if on]

    @classmethod
    def from_dict(cls, data: Any) -> LocalTrainerConfig:
        data = check_keys("trainer", {k: v for k, v in dict(data or {}).items() if k != "name"}, cls)
        if "loggers" in data:
            data["loggers"] = list(data["loggers"])
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def loss(self, erl: Any) -> LossSettings:
        """The loss's settings: this section's loss keys + the validated `erl:` section's distillation."""
        return LossSettings(clip_low=self.clip_low, clip_high=self.clip_high, clip_ratio_c=self.clip_ratio_c,
                            loss_agg_mode=self.loss_agg_mode, kl_coef=self.kl_coef, kl_kind=self.kl_kind,
                            entropy_coeff=self.entropy_coeff, distill_mode=erl.distill_mode,
                            distill_coef=erl.distill_coef)


def check_runtime(cfg: Any) -> None:
    """precision, device and loggers: the same choices for every trainer built on this one."""
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"trainer.precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    bad = [x for x in cfg.loggers if x not in LOGGERS]
    if bad:
        raise ConfigError(f"trainer.loggers: unknown {bad}; choose from {LOGGERS}")
    if not (cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:")):
        raise ConfigError(f"trainer.device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    problem = wandb_problem() if "wandb" in cfg.loggers else None
    if problem:
        raise ConfigError(f"trainer.loggers: wandb {problem}")


def wandb_problem() -> str | None:
    """Why wandb.init would fail at the first step (after the run folder is written), or None: not
    installed, or no credentials where it looks for them (WANDB_API_KEY, ~/.netrc) and no local mode.
    A self-hosted server (WANDB_BASE_URL) is left to wandb."""
    if importlib.util.find_spec("wandb") is None:
        return "is not installed: pip install 'erl[wandb]'"
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY") \
            or os.environ.get("WANDB_BASE_URL"):
        return None
    netrc = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace"):
        return None
    return "has no credentials: run `wandb login`, set WANDB_API_KEY, or WANDB_MODE=offline to log locally"
