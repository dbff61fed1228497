"""Right-padded rows (erl.core.padding.right_pad_rows) as a batch, and scoring them with a causal LM."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erl.core.logprobs import token_logprobs
from erl.core.losses import token_entropy
from erl.core.padding import right_pad_rows
from erl.core.types import TokenSample
from erl.rollout.device import attention_kernels, to_device
from erl.rollout.kv import unwrap


@dataclass
class PaddedBatch:
    """Rows as erl.core.padding.right_pad_rows lays them out: input_ids [B, T], each row's prompt
    and response from column 0 and padding after; row i's response starts at column starts[i]
    and sits, right-padded, in responses / response_mask [B, R]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # [B, T], 1 on real tokens (the forward needs none: see response_logprobs)
    starts: torch.Tensor  # [B]
    response_mask: torch.Tensor  # [B, R] float, 1 on model-generated tokens
    responses: torch.Tensor  # [B, R]
    rollout_logprobs: torch.Tensor  # [B, R] float, the rollout's log-prob of each response token
    segment_ids: torch.Tensor  # [B]
    rewards: torch.Tensor  # [B]

    def to(self, device: torch.device | str) -> PaddedBatch:
        fields = {k: to_device(v, device, v.dtype) for k, v in self.__dict__.items()}
        return PaddedBatch(**fields)


def pad_samples(samples: list[TokenSample], pad_id: int) -> PaddedBatch:
    t = right_pad_rows(samples, pad_id)
    return PaddedBatch(input_ids=t["input_ids"], attention_mask=t["attention_mask"], starts=t["starts"],
                       response_mask=t["response_mask"].float(), responses=t["responses"],
                       rollout_logprobs=t["rollout_log_probs"], segment_ids=t["segment_ids"], rewards=t["rewards"])


def response_logprobs(model, batch: PaddedBatch, temperature: float = 1.0,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(response token | everything before it), [B, R], under logits / temperature
    (the distribution the rollout sampled from); with_entropy: also that distribution's
    entropy per token [B, R] (from the same log-softmax, so it costs no second forward).
    Padding comes after every row's real tokens, so a causal forward without a mask gives each
    real token what it would get alone (SDPA then runs its causal kernels: no mask to build or
    read, and no query row left with nothing to attend to)."""
    base = unwrap(model)
    for name in ("logit_scale", "logits_scaling"):  # Cohere's and Granite's forwards rescale logits: not done here
        if getattr(base.config, name, 1.0) not in (None, 1, 1.0):
            raise ValueError(f"response_logprobs: the model's config sets {name}, which its own forward applies to "
                             "the logits and this one does not; such models are not supported by the local trainer")
    R = batch.responses.shape[1]
    with attention_kernels():  # its backward runs outside it, but autograd reuses the forward's kernel
        hidden = base.get_decoder()(input_ids=batch.input_ids, use_cache=False).last_hidden_state
    # Only the positions before response tokens need the LM head: on a 49k vocabulary the
    # prompt's logits would cost more than the rest of the forward pass. Row i's token j is
    # predicted at column starts[i] - 1 + j; past the row's response (masked) any column will do.
    cols = (batch.starts[:, None] - 1 + torch.arange(R, device=batch.starts.device)).clamp(max=hidden.shape[1] - 1)
    hidden = hidden.gather(1, cols[..., None].expand(-1, -1, hidden.shape[-1]))
    logits = base.get_output_embeddings()(hidden).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2's soft cap, as its forward applies it
        logits = torch.tanh(logits / cap) * cap
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
    `max_tokens` > 0: a micro-batch also holds at most this many padded tokens (rows x its
    longest row, the PaddedBatch it becomes), as verl's dynamic batch size does: many short
    rows or few long ones, one launch-bound pass each; a longer row goes alone."""
    kinds = kinds or [0] * len(samples)
    chunks: list[list[int]] = []
    for kind in sorted(set(kinds)):
        rows = [i for i in range(len(samples)) if kinds[i] == kind]
        order = sorted(rows, key=lambda i: len(samples[i].prompt_ids) + len(samples[i].response_ids))
        chunk: list[int] = []
        for i in order:
            width = len(samples[i].prompt_ids) + len(samples[i].response_ids)  # sorted: the chunk's longest
            if chunk and (len(chunk) == size or (max_tokens and (len(chunk) + 1) * width > max_tokens)):
                chunks.append(chunk)
                chunk = []
            chunk.append(i)
        if chunk:
            chunks.append(chunk)
    return chunks
