"""ERL's actor loss: token-level PPO-clip over every segment + masked consolidation.

All tensors are [B, T] over response tokens (B rows, T padded response length) unless
noted; `mask` is 1 on tokens the model generated. Pure torch, no trainer state: the
local trainer calls `erl_actor_loss` directly and the verl trainer installs it through
verl's loss-function hook.
"""

from __future__ import annotations

import torch

from erl.core.advantages import DISTILL_ID

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean")
KL_KINDS = ("k1", "k2", "low_var_kl")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x where mask is 1; 0 (not NaN) when the mask is empty."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """token-mean: every trained token weighs the same (long attempts weigh more);
    seq-mean-token-mean: each row's token mean, then the mean over rows that have tokens."""
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if mode == "seq-mean-token-mean":
        mask = mask.to(loss_mat.dtype)
        per_row_tokens = mask.sum(-1)
        per_row = (loss_mat * mask).sum(-1) / per_row_tokens.clamp(min=1.0)
        has = (per_row_tokens > 0).to(loss_mat.dtype)
        return (per_row * has).sum() / has.sum().clamp(min=1.0)
    raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {mode!r}")


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.28,
                  loss_agg_mode: str = "token-mean") -> tuple[torch.Tensor, dict[str, float]]:
    """max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) per token, r = pi / pi_old.

    The asymmetric range (clip-higher) leaves more room to raise unlikely tokens than to
    lower likely ones, which keeps exploration alive. `advantages` is [B] or [B, T].
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    losses = torch.maximum(unclipped, clipped)
    loss = aggregate(losses, mask, loss_agg_mode)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(-log_ratio, mask)
    return loss, {"pg_clipfrac": float(clipfrac), "ppo_kl": float(approx_kl)}


def distill_nll_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Consolidation: -log pi(y2 | x) averaged over the response tokens under `mask`."""
    return -masked_mean(logprobs, mask)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    k1 = log pi - log ref; k2 = (log pi - log ref)^2 / 2; low_var_kl (k3) =
    exp(ref - pi) - (ref - pi) - 1, always >= 0, clamped to [-10, 10] for stability.
    """
    diff = logprobs - ref_logprobs
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff.square()
    if kind == "low_var_kl":
        return (torch.exp(-diff) + diff - 1.0).clamp(min=-10.0, max=10.0)
    raise ValueError(f"kl kind must be one of {KL_KINDS}, got {kind!r}")


def erl_actor_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                   response_mask: torch.Tensor, segment_ids: torch.Tensor, *, distill_mode: str = "sft",
                   distill_coef: float = 1.0, clip_low: float = 0.2, clip_high: float = 0.28,
                   ref_logprobs: torch.Tensor | None = None, kl_coef: float = 0.0,
                   kl_kind: str = "low_var_kl", loss_agg_mode: str = "token-mean",
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """policy-gradient loss + kl_coef * KL + distill_coef * consolidation NLL.

    sft mode: distill rows are excluded from the policy-gradient term (so they do not
    dilute its token mean) and trained by the NLL term alone. raft mode: distill rows
    are ordinary policy-gradient rows (their advantage is max(r2, 0)); no NLL term.
    """
    mask = response_mask.to(logprobs.dtype)
    is_distill = (segment_ids == DISTILL_ID).to(logprobs.dtype).unsqueeze(-1)
    if distill_mode == "sft":
        pg_mask, sft_mask = mask * (1.0 - is_distill), mask * is_distill
    elif distill_mode in ("raft", "none"):
        pg_mask, sft_mask = mask, torch.zeros_like(mask)
    else:
        raise ValueError(f"distill_mode must be sft, raft or none, got {distill_mode!r}")
    pg_loss, metrics = ppo_clip_loss(logprobs, old_logprobs, advantages, pg_mask, clip_low, clip_high,
                                     loss_agg_mode)
    total = pg_loss
    metrics["pg_loss"] = float(pg_loss.detach())
    if ref_logprobs is not None and kl_coef > 0:
        kl = aggregate(kl_penalty(logprobs, ref_logprobs, kl_kind), mask, loss_agg_mode)
        total = total + kl_coef * kl
        metrics["kl"] = float(kl.detach())
    if distill_mode == "sft" and bool(sft_mask.any()):
        nll = distill_nll_loss(logprobs, sft_mask)
        total = total + distill_coef * nll
        metrics["distill_nll"] = float(nll.detach())
    metrics["total"] = float(total.detach())
    return total, metrics
