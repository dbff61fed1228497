"""log p(label) from logits over a large vocabulary, fast and memory-bounded.

verl's fallback when flash-attn's cross-entropy kernel is absent (`logprobs_from_logits_v2`)
loops over the first dimension to bound memory. Its engine passes logits flattened to
[tokens, vocab], so that loop launches a log-softmax per *token*: ~180k tiny kernels forward
and as many backward for one FrozenLake step, which made the verl update ~15x slower than the
local trainer's on an H200 (docs/gpu/verl_frozenlake_scale). This is the same quantity in
chunks of rows, with a backward that recomputes the softmax chunk by chunk: it stores only one
float per token (the log-partition) besides the logits themselves, like the fused kernel does.
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 4096  # rows per log-sum-exp chunk: a [4096, 49k] fp32 block is ~0.8 GB


class _TokenLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[0], chunk):
            lse[i:i + chunk] = torch.logsumexp(logits[i:i + chunk].float(), dim=-1)
        picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).float()
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk = chunk
        return picked - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, labels, lse = ctx.saved_tensors
        grad = grad.float()
        out = torch.empty_like(logits)
        for i in range(0, logits.shape[0], ctx.chunk):
            g = grad[i:i + ctx.chunk, None]
            # d(x_y - lse)/dx = onehot(y) - softmax(x)
            block = torch.exp(logits[i:i + ctx.chunk].float() - lse[i:i + ctx.chunk, None]).mul_(-g)
            block.scatter_add_(-1, labels[i:i + ctx.chunk, None], g)
            out[i:i + ctx.chunk] = block.to(out.dtype)
        return out, None, None


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """log softmax(logits)[label] in fp32, shape labels.shape; logits [..., V] in any float dtype."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    flat = logits.reshape(-1, logits.shape[-1])
    out = _TokenLogprob.apply(flat, labels.reshape(-1).long(), int(chunk_rows))
    return out.view(labels.shape)


def logprob_gap(logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How far the trainer's log-probs of the sampled tokens are from the rollout's own ([B, R]
    each, `mask` 1 on trained tokens): (sum and max of |difference| over those tokens, their
    count), as 0-dim tensors left on the device. The rollout engine and the training forward run
    other kernels on other shapes; in bf16 their log-probs differ, and this is by how much, on
    the run's own tokens (verl logs the same as rollout_probs_diff)."""
    on = mask > 0
    gap = (logprobs.detach().float() - rollout_logprobs.float()).abs().masked_fill(~on, 0.0)
    return gap.sum(), gap.max() if gap.numel() else gap.new_zeros(()), on.sum()
