"""The rollout policy a trainer uses: the engine (erl.rollout.engine) or batched `generate`
(erl.rollout.hf_policy), chosen by `trainer.rollout_engine`."""

from __future__ import annotations

import logging
from typing import Any

from erl.rollout.engine import RolloutEngine
from erl.rollout.kv import unsupported_reason
from erl.rollout.merged import MergedLoRA

logger = logging.getLogger(__name__)


def build_policy(model: Any, tokenizer: Any, engine: str = "auto", max_batch_size: int = 64,
                 compile: bool | str = False, merge_lora: bool = True, cuda_graphs: bool = True,
                 lend: bool = True, autocast_dtype: Any = None, decode_attention: str = "efficient",
                 regions: bool = False) -> Any:
    """The rollout policy a trainer uses. engine: `engine` (RolloutEngine, an error if the
    model is unsupported), `hf` (HFPolicy: batched `generate`), `auto`: the engine for a
    supported architecture, else HFPolicy. Measured on both devices in the trainer's own
    workload (`python benchmarks/rollout.py --workload erl`): on CPU a multi-turn episode
    re-prefills its whole context every turn under `generate`; on an H200 the engine's ERL
    collect was 1.13x and its eval 1.9x faster (docs/gpu/rollout_engine/rollout_erl_workload_gpu.txt),
    and it trained FrozenLake ERL for 40 steps there (docs/gpu/rollout_engine/training). Out of
    GPU memory both halve their batch and go on (logged). `merge_lora`: the engine decodes with
    a LoRA-merged copy of a LoRA model (erl.rollout.merged); `cuda_graphs`: its decode steps replay
    CUDA graphs of the eager forward (erl.rollout.graphs; CUDA only); `lend`: KV lent between slots;
    `autocast_dtype`: every rollout runs under autocast of this dtype, so the merged copy keeps
    its linear weights in it (erl.rollout.merged.cast_linears: the same numbers, fewer kernels);
    `decode_attention`: the engine's decode attention kernel (RolloutEngine.decode_attention);
    `regions`: the engine's compiled regions around attention (RolloutEngine.regions)."""
    from erl.rollout.hf_policy import HFPolicy

    if engine not in ("auto", "engine", "hf"):
        raise ValueError(f"rollout_engine must be auto, engine or hf, got {engine!r}")
    if engine == "hf" and (decode_attention != "efficient" or regions):
        raise ValueError(f"decode_attention={decode_attention!r}, regions={regions}: each a setting of the rollout "
                         "engine, not of hf")
    if engine == "hf":
        return HFPolicy(model, tokenizer, max_batch_size=max_batch_size)
    reason = unsupported_reason(model)
    if reason is None:
        # LoRA adapters folded into a copy: fewer ops per decode step, one more copy of the weights
        merged = MergedLoRA.of(model, autocast_dtype) if merge_lora else None
        if merged is not None:
            logger.info("rollout engine: decoding with a LoRA-merged copy of the policy (%d adapted layers, "
                        "%d fused projection groups), re-merged after each update", len(merged.pairs), merged.fused)
        return RolloutEngine(merged.model if merged else model, tokenizer, slots=max_batch_size, compile=compile,
                             refresh=merged.refresh if merged else None, cuda_graphs=cuda_graphs, lend=lend,
                             decode_attention=decode_attention, regions=regions)
    if engine == "engine":
        raise ValueError(f"rollout_engine=engine: {reason}; use rollout_engine=hf or auto")
    logger.warning("rollout engine off (%s): using HFPolicy (batched generate)", reason)
    return HFPolicy(model, tokenizer, max_batch_size=max_batch_size)
