"""ERL's own settings (the `erl:` section of every config), validated before any work starts."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

from erl.core.reflection import PLACEMENTS

MODES = ("erl", "rlvr", "no_reflection", "no_memory")
DISTILL_MODES = ("sft", "raft", "none")


class ConfigError(ValueError):
    """A bad configuration value; the message names the field."""


def check_ints(section: str, obj: Any, names: tuple, minimum: int) -> None:
    """Each named attribute of `obj` is an integer >= minimum (a bool is not an integer here)."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{section}.{name} must be an integer >= {minimum}, got {v!r}")


def check_bools(section: str, obj: Any, names: tuple) -> None:
    """Each named attribute of `obj` (or key, for a dict: absent counts as unset) is true or false:
    YAML's `yes`, a 1, or Hydra's `no` (a string, so true) is not. `section` "": top-level keys."""
    for name in names:
        v = obj.get(name, False) if isinstance(obj, dict) else getattr(obj, name)
        if not isinstance(v, bool):
            raise ConfigError(f"{section + '.' if section else ''}{name} must be true or false, got {v!r}")


def check_numbers(section: str, obj: Any, names: tuple) -> None:
    """Each named attribute of `obj` is a finite number >= 0 (nan and inf compare false, so a
    plain `v < 0` lets them through)."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < math.inf):
            raise ConfigError(f"{section}.{name} must be a finite number >= 0, got {v!r}")


def check_keys(section: str, data: Any, known: Any) -> dict:
    """`data` as a plain dict, or a ConfigError naming `section`, the keys it does not know and
    the ones it does. `known`: key names, or a dataclass whose fields are the keys. A misspelt
    key is an error, never silently ignored."""
    names = {f.name for f in fields(known)} if isinstance(known, type) else {str(k) for k in known}
    data = dict(data or {})
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        hints = [f"{k} -> {' or '.join(close)}" for k in unknown if (close := closest_keys(k, names))]
        did_you_mean = f" (did you mean: {'; '.join(hints)}?)" if hints else ""
        raise ConfigError(f"{section}: unknown key(s) {unknown}{did_you_mean}; known keys: {sorted(names)}")
    return data


def closest_keys(name: str, known: Any, n: int = 3) -> list[str]:
    """The known keys most like a misspelt (possibly dotted) one: its siblings by last part
    (`trainer.stepz` -> `trainer.total_steps`; comparing whole names would rank every
    `trainer.*` key close), else the same last part in another section (`lr` -> `trainer.lr`).
    Only the best matches: those within 0.15 of the best similarity."""
    cands = sorted({str(k) for k in known})
    parent, _, leaf = name.rpartition(".")
    for pool, cutoff in (([c for c in cands if c.rpartition(".")[0] == parent], 0.5), (cands, 0.75)):
        scored = sorted(((difflib.SequenceMatcher(None, leaf, c.rpartition(".")[2]).ratio(), c) for c in pool),
                        key=lambda sc: -sc[0])
        if scored and scored[0][0] >= cutoff:
            return [c for score, c in scored[:n] if score >= max(cutoff, scored[0][0] - 0.15)]
    return []


@dataclass
class ErlConfig:
    mode: str = "erl"
    tau: float = 1.0  # reflect when r1 < tau (rewards in [0, 1]: reflect unless fully solved)
    # D enters memory when r2 >= memory_threshold; None means tau. (ERL_SPEC writes r2 > tau,
    # which with tau = 1 and rewards <= 1 would never store; "y2 succeeded" is what is meant.)
    memory_threshold: float | None = None
    n_attempt: int = 4  # samples per attempt per task (rlvr runs 2n first attempts)
    max_turns: int = 8
    reflection_tag: str = "prompt"
    max_reflection_chars: int = 2000
    reflection_require_tag: bool = True  # False: an untagged answer counts as the reflection
    reflection_placement: str = "append_system"
    memory_top_k: int = 1
    memory_size: int = 256
    distill_mode: str = "sft"  # sft: masked NLL on x -> y2; raft: PG rows with adv max(r2, 0)
    distill_coef: float = 1.0
    max_new_tokens: int = 256
    max_reflection_tokens: int = 256
    temperature: float = 0.7

    def __post_init__(self) -> None:
        validate(self)

    @property
    def store_threshold(self) -> float:
        return self.tau if self.memory_threshold is None else self.memory_threshold

    @property
    def uses_reflection(self) -> bool:
        return self.mode in ("erl", "no_memory")

    @property
    def uses_memory(self) -> bool:
        return self.mode == "erl"

    @property
    def first_attempts_per_task(self) -> int:
        """Compute matching: RLVR gets the rollouts ERL spends on both attempts."""
        return 2 * self.n_attempt if self.mode == "rlvr" else self.n_attempt

    @classmethod
    def from_dict(cls, data: Any) -> ErlConfig:
        """Build from a dict / DictConfig; unknown keys are an error, not ignored."""
        return cls(**check_keys("erl", data, cls))


def _check_type(name: str, value: Any, kinds: tuple, label: str) -> None:
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"erl.{name} must be {label}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"erl.{name} must be {label}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # nan passes every < / > check
        raise ConfigError(f"erl.{name} must be a finite number, got {value!r}")


def validate(cfg: ErlConfig) -> None:
    if cfg.mode not in MODES:
        raise ConfigError(f"erl.mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.distill_mode not in DISTILL_MODES:
        raise ConfigError(f"erl.distill_mode must be one of {DISTILL_MODES}, got {cfg.distill_mode!r}")
    if cfg.reflection_placement not in PLACEMENTS:
        raise ConfigError(
            f"erl.reflection_placement must be one of {PLACEMENTS}, got {cfg.reflection_placement!r}"
        )
    for name in ("tau", "distill_coef", "temperature"):
        _check_type(name, getattr(cfg, name), (int, float), "a number")
    if cfg.memory_threshold is not None:
        _check_type("memory_threshold", cfg.memory_threshold, (int, float), "a number or null")
    # Rewards are in [0, 1]: a gate outside it is constant (tau > 1 reflects on solved
    # tasks too, tau <= 0 never reflects; a store threshold > 1 never stores), never what was meant.
    if not 0 < cfg.tau <= 1:
        raise ConfigError(f"erl.tau must be in (0, 1] (rewards are in [0, 1]), got {cfg.tau}")
    if cfg.memory_threshold is not None and not 0 <= cfg.memory_threshold <= 1:
        raise ConfigError(f"erl.memory_threshold must be in [0, 1] or null (rewards are in [0, 1]), "
                          f"got {cfg.memory_threshold}")
    for name, low in (("n_attempt", 1), ("max_turns", 1), ("max_reflection_chars", 1),
                      ("memory_top_k", 0), ("memory_size", 1), ("max_new_tokens", 1),
                      ("max_reflection_tokens", 1)):
        value = getattr(cfg, name)
        _check_type(name, value, (int,), "an integer")
        if value < low:
            raise ConfigError(f"erl.{name} must be >= {low}, got {value}")
    if cfg.distill_coef < 0:
        raise ConfigError(f"erl.distill_coef must be >= 0, got {cfg.distill_coef}")
    if cfg.temperature < 0:
        raise ConfigError(f"erl.temperature must be >= 0, got {cfg.temperature}")
    if not isinstance(cfg.reflection_require_tag, bool):
        raise ConfigError(f"erl.reflection_require_tag must be true/false, got {cfg.reflection_require_tag!r}")
    if not isinstance(cfg.reflection_tag, str) or not cfg.reflection_tag.isidentifier():
        raise ConfigError(f"erl.reflection_tag must be a plain tag name like 'prompt', got {cfg.reflection_tag!r}")


def check_placement(placement: Any) -> Any:
    """A runner's reflection placement: None (the ErlConfig's), a name from PLACEMENTS, or a
    callable(messages, guidance) -> messages."""
    if placement is None or callable(placement) or placement in PLACEMENTS:
        return placement
    raise ConfigError(f"placement must be one of {PLACEMENTS} or a callable(messages, guidance), got {placement!r}")
