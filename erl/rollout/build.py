"""The rollout policy a trainer uses: the engine (erl.rollout.engine) or batched `generate`
(erl.rollout.hf_policy), chosen by `trainer.rollout_engine`."""

from __future__ import annotations

import logging
from typing import Any

from erl.rollout.engine import RolloutEngine
from erl.rollout.kv import unsupported_reason

logger = logging.getLogger(__name__)


def build_policy(model: Any, tokenizer: Any, engine: str = "auto", max_batch_size: int = 64,
                 compile: bool | str = False) -> Any:
    """The rollout policy a trainer uses. engine: `engine` (RolloutEngine, an error if the
    model is unsupported), `hf` (HFPolicy: batched `generate`), `auto`: whichever was measured
    faster on the model's device. On CPU that is the engine, for a supported architecture:
    a multi-turn FrozenLake episode re-prefills its whole context every turn under `generate`,
    and prefill is what a CPU pays for (`python benchmarks/rollout.py --workload erl`). On CUDA
    it is HFPolicy for now: plain `generate` decoded faster in the synthetic benchmark, the engine
    1.1-1.9x faster in the trainer's own workload (docs/gpu/rollout_engine), and the engine has
    not yet run a GPU training step (its KV cache next to other runs' memory is unmeasured)."""
    from erl.rollout.hf_policy import HFPolicy

    if engine not in ("auto", "engine", "hf"):
        raise ValueError(f"rollout_engine must be auto, engine or hf, got {engine!r}")
    if engine == "hf":
        return HFPolicy(model, tokenizer, max_batch_size=max_batch_size)
    reason = unsupported_reason(model)
    if engine == "auto" and next(model.parameters()).device.type == "cuda":
        return HFPolicy(model, tokenizer, max_batch_size=max_batch_size)
    if reason is None:
        return RolloutEngine(model, tokenizer, slots=max_batch_size, compile=compile)
    if engine == "engine":
        raise ValueError(f"rollout_engine=engine: {reason}; use rollout_engine=hf or auto")
    logger.warning("rollout engine off (%s): using HFPolicy (batched generate)", reason)
    return HFPolicy(model, tokenizer, max_batch_size=max_batch_size)
