"""verl's hybrid actor/rollout/ref worker, plus ERL's entry point for HF generation.

Importing this module registers the "hf" rollout backend with verl (the registry is a
module-level table, so the registration must happen in every worker process: Ray imports
this module there when it unpickles the worker class).
"""

from __future__ import annotations

from verl import DataProto
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker
from verl.workers.rollout import base as _rollout_base

HF_ROLLOUT = "erl.trainers.verl.hf_rollout.HFRolloutEngine"
_rollout_base._ROLLOUT_REGISTRY[("hf", "async")] = HF_ROLLOUT


class ErlActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's ActorRolloutRefWorker (FSDP engine, weight sync, checkpoints) unchanged, with
    one more method: data-parallel generation on the worker's own HF rollout copy."""

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def erl_generate(self, data: DataProto) -> DataProto:
        if not hasattr(self.rollout, "generate_proto"):
            raise RuntimeError(f"erl_generate needs the hf rollout backend, this worker runs "
                               f"{type(self.rollout).__name__}")
        return self.rollout.generate_proto(data)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def erl_max_memory_gb(self) -> float:
        """Peak GPU memory of this worker process since it started, in GiB."""
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
