"""verl's hybrid actor/rollout/ref worker, plus ERL's entry point for HF generation.

Importing this module registers the "hf" rollout backend with verl (the registry is a
module-level table, so the registration must happen in every worker process: Ray imports
this module there when it unpickles the worker class). For the same reason it is where
the FSDP engine gets chunked log-probs when flash-attn's cross-entropy kernel is absent
(`install_chunked_logprobs`).
"""

from __future__ import annotations

from verl import DataProto
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker
from verl.workers.rollout import base as _rollout_base

from erl.core.logprobs import token_logprobs

HF_ROLLOUT = "erl.trainers.verl.hf_rollout.HFRolloutEngine"
_rollout_base._ROLLOUT_REGISTRY[("hf", "async")] = HF_ROLLOUT


def chunked_logprobs_from_logits(logits, labels, inplace_backward=True):
    """verl's `logprobs_from_logits` signature over erl.core.logprobs.token_logprobs."""
    return token_logprobs(logits, labels)


def install_chunked_logprobs() -> bool:
    """Without flash-attn, verl's FSDP engine computes log-probs with one log-softmax per
    token (its row loop over [tokens, vocab]): ~15x slower updates on an H200. Swap in the
    chunked equivalent there; leave verl alone where its fused kernel is in use, or where
    ERL_VERL_LOGPROBS=verl asks for verl's own path. Returns whether it swapped."""
    import os

    from verl.utils import torch_functional as verl_F
    from verl.workers.engine.fsdp import transformer_impl

    if verl_F.FLAH_ATTN_CROSS_ENTROPY_LOSS_AVAILABLE or os.environ.get("ERL_VERL_LOGPROBS", "chunked") == "verl":
        return False
    transformer_impl.logprobs_from_logits = chunked_logprobs_from_logits
    return True


install_chunked_logprobs()


class ErlActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's ActorRolloutRefWorker (FSDP engine, weight sync, checkpoints) unchanged, with
    ERL's methods: data-parallel generation on the worker's own HF rollout copy, or a share of
    a phase's episodes run on it (collect_in_workers)."""

    def _hf_rollout(self, method: str):
        """The worker's rollout, which `method` needs to be this package's hf backend."""
        if not hasattr(self.rollout, "generate_proto"):
            raise RuntimeError(f"{method} needs the hf rollout backend, this worker runs {type(self.rollout).__name__}")
        return self.rollout

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def erl_generate(self, data: DataProto) -> DataProto:
        return self._hf_rollout("erl_generate").generate_proto(data)

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def erl_collect(self, data: DataProto) -> DataProto:
        """This worker's share of a phase's episodes, run next to its engine (collect_in_workers)."""
        return self._hf_rollout("erl_collect").collect_proto(data)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def erl_max_memory_gb(self) -> float:
        """Peak GPU memory of this worker process since it started, in GiB."""
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
