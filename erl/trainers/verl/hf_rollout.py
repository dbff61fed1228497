"""An HF-transformers rollout backend behind verl's rollout interface (BaseRollout).

For GPUs where neither vLLM nor SGLang is installed. Each actor worker holds one copy of
the policy for generation (`.precision` below); after every update verl's hybrid weight sync
(`ActorRolloutRefWorker.update_weights`, checkpoint_engine backend "naive") streams the
FSDP actor's full tensors into it through `update_weights`. Generation runs on
erl.rollout.engine (continuous batching, KV kept across turns) for Llama-family models, else
batched `model.generate` (HFPolicy); both return token ids and their log-probs under
logits / temperature, the distribution that was sampled. Choose with
`rollout.engine_kwargs.hf.engine: auto|engine|hf` (auto, the default: the engine where
supported, as the local trainer's `trainer.rollout_engine`), `rollout.engine_kwargs.hf.compile`,
`.decode_attention` (efficient | flex, as `trainer.rollout_decode_attention`), `.regions` (as
`trainer.rollout_regions`: CUDA only), `.fused` (default: on CUDA, the generation copy's q/k/v and
gate/up as one matmul each, erl.rollout.fused) and `.precision` (mixed, the default on CUDA: the
local trainer's bf16 rollout copy, fp32 norms and embedding, bf16 linears, under bf16 autocast;
bf16: wholly bf16; fp32, the default on CPU).

Registered with verl as rollout name "hf" (mode "async") by erl.trainers.verl.workers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import torch

from erl.trainers.verl.dataproto import object_array

logger = logging.getLogger(__name__)

# mixed: the local trainer's bf16 rollout copy (fp32 embedding and norms, bf16 linears, run under
# bf16 autocast); the engine's fused norms and compiled regions take only its fp32 hidden states, and
# on one H200 the same ERL collect took 7% less time on it than on a copy wholly in bf16
# (docs/gpu/verl_copy/c1/copies.txt)
PRECISIONS = ("mixed", "bf16", "fp32")


class HFRolloutEngine:
    """verl BaseRollout-compatible: resume / update_weights / release, plus `generate_proto`."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any = None, **kwargs: Any):
        from transformers import AutoModelForCausalLM
        from verl.utils.config import omega_conf_to_dataclass

        from erl.rollout.build import build_policy
        from erl.rollout.fused import fuse_projections
        from erl.rollout.kv import unsupported_reason
        from erl.rollout.merged import cast_linears

        self.config = omega_conf_to_dataclass(config)
        self.model_config = omega_conf_to_dataclass(model_config)
        self.device_mesh = device_mesh
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        opts = dict((getattr(self.config, "engine_kwargs", None) or {}).get("hf") or {})
        precision = opts.get("precision") or ("mixed" if device.type == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"rollout.engine_kwargs.hf.precision must be one of {PRECISIONS}, got {precision!r}")
        path = self.model_config.local_path or self.model_config.path
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.bfloat16 if precision == "bf16" else torch.float32).to(device).eval()
        reason = unsupported_reason(self.model) if precision == "mixed" else None
        if reason:
            logger.warning("hf rollout: precision mixed is for the rollout engine's models (%s); using bf16", reason)
            self.model.to(torch.bfloat16)
            precision = "bf16"
        self.precision = precision
        if precision == "mixed":  # the local trainer's bf16 rollout copy, run as it runs it: under autocast
            cast_linears(self.model, torch.bfloat16)
        tokenizer = self.model_config.tokenizer
        # rollout.max_num_seqs bounds a vLLM batch; here it bounds one generate call.
        gen_batch = int(getattr(self.config, "max_num_seqs", None) or 256)
        # this copy is the rollout's own (weight syncs write into it in place), so its projections
        # may be fused as the local trainer's rollout copy is: fewer kernels a forward on a GPU
        if opts.get("fused", device.type == "cuda"):
            fuse_projections(self.model)
        self.policy = build_policy(self.model, tokenizer, opts.get("engine", "auto"), max_batch_size=gen_batch,
                                   compile=opts.get("compile", False), cuda_graphs=opts.get("cuda_graphs", True),
                                   decode_attention=opts.get("decode_attention", "efficient"),
                                   regions=bool(opts.get("regions", False)))
        self.synced = 0
        self.collector = None  # erl_trainer.collect_in_workers: the episodes' runner on this engine

    def context(self):
        """What every generation of this copy runs inside: bf16 autocast for the mixed copy."""
        if self.precision == "mixed":
            return torch.autocast(self.model.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- verl's rollout interface ----------------------------------------------------
    async def resume(self, tags: list[str]) -> None:
        """Weights and cache live on the GPU all the time (a small model, no KV pool)."""

    async def release(self) -> None:
        pass

    async def update_weights(self, weights: Iterable, wire_format: str = "named_tensors", peft_config: Any = None,
                             **kwargs: Any) -> None:
        if wire_format != "named_tensors":
            raise ValueError(f"HF rollout takes full named tensors, got wire_format={wire_format!r}")
        if peft_config is not None:  # verl sends bare adapters unless it merges them first
            raise ValueError("the hf rollout takes full weights, not LoRA adapters: with "
                             "actor_rollout_ref.model.lora_rank > 0 set actor_rollout_ref.model.lora.merge=true "
                             "(verl then syncs W + BA)")
        self.load_named_tensors(weights)

    def load_named_tensors(self, weights: Iterable) -> int:
        """Copy (name, tensor) pairs into the generation model; returns how many matched."""
        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        matched, unknown = 0, []
        with torch.no_grad():
            for name, tensor in weights:
                target = params.get(name)
                if target is None:
                    if not (tied and name.endswith("lm_head.weight")):  # tied: the embedding carries it
                        unknown.append(name)
                    continue
                if hasattr(tensor, "full_tensor"):  # a DTensor shard: gather it
                    tensor = tensor.full_tensor()
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))
                matched += 1
        if matched == 0:
            raise RuntimeError(f"HF rollout weight sync matched no parameter; first names sent: {unknown[:5]}")
        head, embedding = self.model.get_output_embeddings(), self.model.get_input_embeddings()
        if tied and head.weight is not embedding.weight:  # untied by cast_linears: follows the embedding
            with torch.no_grad():
                head.weight.copy_(embedding.weight.to(head.weight.dtype))
        if unknown:
            logger.warning("HF rollout: %d synced tensors have no counterpart (first: %s)", len(unknown), unknown[:3])
        self.synced += 1
        return matched

    # ---- generation ------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], temperature: float, top_p: float, max_new_tokens: int):
        from erl.core.interfaces import SamplingParams

        params = SamplingParams(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))
        with self.context():
            if hasattr(self.policy, "forget"):  # the engine queues them all and fills its own slots
                return self.policy.generate_batch(prompts, params)
            out = []
            size = self.policy.max_batch_size
            for k in range(0, len(prompts), size):
                out.extend(self.policy.generate_batch(prompts[k:k + size], params))
            return out

    def generate_proto(self, data: Any) -> Any:
        """DataProto in (non-tensor `prompt_ids`, sampling in meta_info) -> DataProto out
        (non-tensor `token_ids`, `logprobs`, `finish_reason`)."""
        from verl import DataProto

        from erl.trainers.driver import reset_policy

        meta = data.meta_info
        if meta.get("reset"):  # a phase's first batch (WorkerGroupPolicy.reset)
            reset_policy(self.policy)
        if meta.get("seed") is not None:  # same seed on every rank: their prompts differ anyway
            torch.manual_seed(int(meta["seed"]))
        prompts = [list(map(int, p)) for p in data.non_tensor_batch["prompt_ids"]]
        gens = self.generate(prompts, meta.get("temperature", 1.0), meta.get("top_p", 1.0),
                             meta.get("max_new_tokens", 256)) if prompts else []
        return DataProto.from_dict(non_tensors={
            "token_ids": object_array([g.token_ids for g in gens]),
            "logprobs": object_array([g.logprobs for g in gens]),
            "finish_reason": object_array([g.finish_reason for g in gens]),
        })  # no per-rank meta_info: DataProto.concat refuses values that differ between ranks

    def collect_proto(self, data: Any) -> Any:
        """A phase's episodes run here, on this worker's engine (erl_trainer.collect_in_workers):
        non-tensor `item` in (erl.trainers.verl.worker_collect.WorkerCollector.run says what),
        non-tensor `result` out, and this worker's counters as `stats` on its first row."""
        from verl import DataProto

        from erl.trainers.verl.worker_collect import WorkerCollector

        if self.collector is None:
            self.collector = WorkerCollector(self.policy, context=self.context)
        items = list(data.non_tensor_batch["item"])
        results, stats = self.collector.run(items, data.meta_info)
        return DataProto.from_dict(non_tensors={"result": object_array(results),
                                                "stats": object_array([stats] + [None] * (len(items) - 1))})
