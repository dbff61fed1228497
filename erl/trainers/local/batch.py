"""Padded rows (erl.core.padding) as a batch, and scoring them with a causal LM."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erl.core.logprobs import token_logprobs
from erl.core.losses import token_entropy
from erl.core.padding import pad_rows
from erl.core.types import TokenSample
from erl.rollout.device import attention_kernels, to_device


@dataclass
class PaddedBatch:
    """[B, P + R]: prompts left-padded to P, responses right-padded to R, so every row's
    response starts at column P and response logits sit in one slice for the whole batch."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_mask: torch.Tensor  # [B, R] float, 1 on model-generated tokens
    responses: torch.Tensor  # [B, R]
    prompt_width: int
    segment_ids: torch.Tensor  # [B]
    rewards: torch.Tensor  # [B]

    def to(self, device: torch.device | str) -> PaddedBatch:
        fields = {k: (to_device(v, device, v.dtype) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return PaddedBatch(**fields)


def pad_samples(samples: list[TokenSample], pad_id: int) -> PaddedBatch:
    t = pad_rows(samples, pad_id)
    return PaddedBatch(
        input_ids=t["input_ids"], attention_mask=t["attention_mask"], position_ids=t["position_ids"],
        response_mask=t["response_mask"].float(), responses=t["responses"], prompt_width=t["prompts"].shape[1],
        segment_ids=t["segment_ids"], rewards=t["rewards"])


def causal_mask_without_empty_rows(attention_mask: torch.Tensor, kernel: str) -> torch.Tensor:
    """[B, T] key-padding mask -> [B, 1, T, T] causal mask in which every query sees at least itself.

    Under a plain causal + padding mask, the pad positions of a left-padded row attend to nothing.
    SDPA's bf16 backward on the GPU then returned NaN gradients for such batches (ERL, H200: one
    step in five; the replay in docs/gpu/frozenlake_smollm2_gpu_preset/*/nonfinite.jsonl was NaN
    only for bf16 + sdpa, finite for fp32 or the eager kernel). Letting a pad query see its own
    position changes no real token's output: real queries still never see pad keys.
    `kernel` "eager" gets the additive float form that kernel expects, others a boolean mask."""
    T = attention_mask.shape[1]
    dev = attention_mask.device
    causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
    mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
    mask = mask | torch.eye(T, dtype=torch.bool, device=dev)[None, None]
    if kernel == "eager":
        return torch.zeros(mask.shape, device=dev).masked_fill(~mask, torch.finfo(torch.float32).min)
    return mask


def response_logprobs(model, batch: PaddedBatch, temperature: float = 1.0,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(response token | everything before it), [B, R], under logits / temperature
    (the distribution the rollout sampled from); with_entropy: also that distribution's
    entropy per token [B, R] (from the same log-softmax, so it costs no second forward)."""
    R = batch.responses.shape[1]
    kernel = str(getattr(model.config, "_attn_implementation", None) or "sdpa")
    # Flash-attention kernels take the 2-D mask (they unpad; no empty rows); sdpa and eager a 4-D one.
    mask = batch.attention_mask if kernel.startswith("flash") else causal_mask_without_empty_rows(
        batch.attention_mask, kernel)
    # Only the last R + 1 positions need the LM head: on a 49k vocabulary the prompt's
    # logits would cost more than the rest of the forward pass.
    with attention_kernels():  # its backward runs outside it, but autograd reuses the forward's kernel
        out = model(input_ids=batch.input_ids, attention_mask=mask,
                    position_ids=batch.position_ids, use_cache=False, logits_to_keep=R + 1)
    logits = out.logits[:, :-1, :].float()
    if temperature > 0:
        logits = logits / temperature
    if not with_entropy:  # no [B, R, vocab] log-softmax and gradient of it kept: larger micro-batches fit
        return token_logprobs(logits, batch.responses), None
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, batch.responses.unsqueeze(-1)).squeeze(-1)
    return chosen, token_entropy(logp)


def micro_batch_indices(samples: list[TokenSample], size: int, kinds: list[int] | None = None,
                        max_tokens: int = 0) -> list[list[int]]:
    """Row indices sorted by length so each micro-batch pads little; deterministic order.
    `kinds`: rows of different kinds never share a micro-batch (the trainer keeps distillation
    rows, policy-gradient rows and rows with no gradient apart, so it can skip the last).
    `max_tokens` > 0: a micro-batch also holds at most this many padded tokens (rows x (longest
    prompt + longest response), the PaddedBatch it becomes), as verl's dynamic batch size does:
    many short rows or few long ones, one launch-bound pass each; a longer row goes alone."""
    kinds = kinds or [0] * len(samples)
    chunks: list[list[int]] = []
    for kind in sorted(set(kinds)):
        rows = [i for i in range(len(samples)) if kinds[i] == kind]
        order = sorted(rows, key=lambda i: len(samples[i].prompt_ids) + len(samples[i].response_ids))
        chunk: list[int] = []
        width_p = width_r = 0
        for i in order:
            p = max(width_p, len(samples[i].prompt_ids))
            r = max(width_r, len(samples[i].response_ids))
            if chunk and (len(chunk) == size or (max_tokens and (len(chunk) + 1) * (p + r) > max_tokens)):
                chunks.append(chunk)
                chunk, p, r = [], len(samples[i].prompt_ids), len(samples[i].response_ids)
            chunk.append(i)
            width_p, width_r = p, r
        if chunk:
            chunks.append(chunk)
    return chunks
