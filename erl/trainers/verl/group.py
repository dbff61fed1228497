"""The verl side of the ERL trainer: one hybrid worker group (FSDP actor + rollout + ref)
on a Ray resource pool spanning every GPU of every node, and the calls the driver makes.

Mirrors what verl's RayPPOTrainer.init_workers does for the actor, without the pieces ERL
does not use (critic, reward loop, verl's agent loop).
"""

from __future__ import annotations

from typing import Any

import ray

from erl.trainers.verl.loss import install_loss


class VerlWorkers:
    def __init__(self, config: Any, settings: Any):
        from verl.single_controller.ray import RayClassWithInitArgs, RayWorkerGroup
        from verl.single_controller.ray.base import create_colocated_worker_cls
        from verl.trainer.ppo.ray_trainer import ResourcePoolManager
        from verl.trainer.ppo.utils import Role, need_reference_policy

        from erl.trainers.verl.workers import ErlActorRolloutRefWorker

        self.config, self.backend = config, settings.backend
        self.use_ref = need_reference_policy(config)
        role = Role.ActorRolloutRef if self.use_ref else Role.ActorRollout
        nodes, gpus = int(config.trainer.nnodes), int(config.trainer.n_gpus_per_node)
        self.pool_manager = ResourcePoolManager(resource_pool_spec={"global_pool": [gpus] * nodes},
                                                mapping={role: "global_pool"})
        self.pool_manager.create_resource_pool()
        pool = self.pool_manager.get_resource_pool(role)
        worker = RayClassWithInitArgs(cls=ray.remote(ErlActorRolloutRefWorker), config=config.actor_rollout_ref,
                                      role=str(role))
        group = RayWorkerGroup(resource_pool=pool, ray_cls_with_init=create_colocated_worker_cls({str(role): worker}),
                               device_name=config.trainer.device)
        self.wg = group.spawn(prefix_set=[str(role)])[str(role)]
        self.wg.init_model()
        install_loss(self.wg, settings.loss)
        self.dp_size = max(self.wg._query_dispatch_info("actor")) + 1
        self.server_manager = self.checkpoint_manager = None
        if self.backend != "hf":
            from verl.checkpoint_engine import CheckpointEngineManager
            from verl.utils.config import omega_conf_to_dataclass
            from verl.workers.rollout.llm_server import LLMServerManager

            self.server_manager = LLMServerManager.create(config=config, worker_group=self.wg,
                                                          rollout_resource_pool=pool)
            self.checkpoint_manager = CheckpointEngineManager(
                config=omega_conf_to_dataclass(config.actor_rollout_ref.rollout.checkpoint_engine),
                actor_wg=self.wg, replicas=self.server_manager.get_replicas())
            self.checkpoint_manager.sleep_replicas()

    def make_policy(self, tokenizer: Any) -> Any:
        from erl.trainers.verl.rollout import ServerPolicy, WorkerGroupPolicy

        if self.backend == "hf":
            return WorkerGroupPolicy(tokenizer, self.wg.erl_generate, dp_size=self.wg.world_size)
        return ServerPolicy(tokenizer, self.server_manager.get_client())

    def collect(self, items: list, meta: dict) -> tuple[list, list[dict]]:
        """A phase's items run in the workers (erl.trainers.verl.worker_collect), split evenly
        (verl's DP_COMPUTE_PROTO: equal contiguous shares; None pads the last, and runs nothing).
        Returns the results in order and each worker's counters."""
        return collect_in(self.wg.erl_collect, self.wg.world_size, items, meta)

    # ---- the calls of one step ---------------------------------------------------------
    def compute_log_prob(self, td: Any, data: Any):
        from verl.utils import tensordict_utils as tu
        from verl.workers.utils.padding import no_padding_2_padding

        out = self.wg.compute_log_prob(td)
        return no_padding_2_padding(tu.get(out, "log_probs"), td).float()

    def compute_ref_log_prob(self, td: Any, data: Any):
        from verl.utils import tensordict_utils as tu
        from verl.workers.utils.padding import no_padding_2_padding

        out = self.wg.compute_ref_log_prob(td)
        return no_padding_2_padding(tu.get(out, "log_probs"), td).float()

    def update_actor(self, td: Any) -> dict:
        from verl.utils import tensordict_utils as tu

        return tu.get(self.wg.update_actor(td), "metrics")

    def sync_weights(self, step: int) -> None:
        """Actor weights -> rollout (verl's hybrid sync; for hf the full tensors go into each
        worker's generation copy)."""
        if self.checkpoint_manager is not None:
            self.checkpoint_manager.update_weights(step)
        else:
            ray.get(self.wg.update_weights(global_steps=step, mode="naive"))

    def save_checkpoint(self, path: str, step: int, keep: int | None) -> None:
        self.wg.save_checkpoint(path, None, step, max_ckpt_to_keep=keep)

    def load_checkpoint(self, path: str) -> None:
        self.wg.load_checkpoint(path, del_local_after_load=False)

    def max_memory_gb(self) -> float:
        return float(max(self.wg.erl_max_memory_gb()))


def collect_in(erl_collect: Any, world_size: int, items: list, meta: dict) -> tuple[list, list[dict]]:
    """`erl_collect` (the worker group's method, or a stand-in) over items padded to a multiple of
    `world_size`: (results of the real items, in order; the counters each worker reported)."""
    from verl import DataProto

    from erl.trainers.verl.dataproto import object_array

    padded = list(items) + [None] * (-len(items) % world_size)
    out = erl_collect(DataProto.from_dict(non_tensors={"item": object_array(padded)}, meta_info=dict(meta)))
    results = list(out.non_tensor_batch["result"])[:len(items)]
    return results, [s for s in out.non_tensor_batch["stats"] if s is not None]
