"""ERL's actor loss: token-level PPO-clip over every segment + masked consolidation.

All tensors are [B, T] over response tokens (B rows, T padded response length) unless
noted; `mask` is 1 on tokens the model generated. Pure torch, no trainer state: the
local trainer calls `erl_actor_terms` directly (its metrics stay tensors, read once a step) and
the verl trainer installs `erl_actor_loss` (the same terms, metrics as floats) through verl's
loss-function hook, so verl's own policy-loss code never runs. What this file
implements is therefore all either trainer can honour: the allowed values below are the
one list both trainer configs check against (`loss_setting_errors`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from erl.core.advantages import DISTILL_ID
from erl.core.config import DISTILL_MODES

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
# verl's names for the same three estimators, accepted as aliases; a trailing "+" (e.g.
# "low_var_kl+") keeps the value but takes the gradient of k2, which is unbiased.
KL_ALIASES = {"kl": "k1", "mse": "k2", "k3": "low_var_kl"}
KL_BASE_KINDS = ("k1", "k2", "low_var_kl", "abs", *KL_ALIASES)
KL_KINDS = KL_BASE_KINDS + tuple(f"{k}+" for k in KL_BASE_KINDS)
POLICY_LOSS_MODES = ("vanilla",)  # PPO-clip with clip-higher and dual-clip
CLIP_RATIO_C = 3.0  # dual-clip bound (verl's default)
LOG_RATIO_LIMIT = 20.0  # exp(20) ~ 5e8: a ratio beyond it carries no information, only overflow


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x where mask is 1; 0 (not NaN) when the mask is empty."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """token-mean: every trained token weighs the same (long attempts weigh more);
    seq-mean-token-mean: each row's token mean, then the mean over rows that have tokens;
    seq-mean-token-sum: each row's token sum, then that mean over rows (a long row's loss is
    not diluted by its length)."""
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        mask = mask.to(loss_mat.dtype)
        per_row_tokens = mask.sum(-1)
        per_row = (loss_mat * mask).sum(-1)
        if mode == "seq-mean-token-mean":
            per_row = per_row / per_row_tokens.clamp(min=1.0)
        has = (per_row_tokens > 0).to(loss_mat.dtype)
        return (per_row * has).sum() / has.sum().clamp(min=1.0)
    raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {mode!r}")


def floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def ppo_clip_loss(*args, **kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    """ppo_clip_terms with its metrics as floats."""
    loss, metrics = ppo_clip_terms(*args, **kwargs)
    return loss, floats(metrics)


def ppo_clip_terms(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                   mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.28,
                   loss_agg_mode: str = "token-mean", clip_ratio_c: float = CLIP_RATIO_C,
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) per token, r = pi / pi_old, and for
    A < 0 at most -A * clip_ratio_c (dual-clip).

    The asymmetric range (clip-higher) leaves more room to raise unlikely tokens than to
    lower likely ones, which keeps exploration alive. Dual-clip: with A < 0 the clipped
    objective is unbounded in r, so a stale token that became much likelier (r >> 1) would
    get a gradient proportional to r; past clip_ratio_c its loss is constant (gradient 0).
    `advantages` is [B] or [B, T].
    """
    if not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (dual-clip bound), got {clip_ratio_c}")
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    losses = torch.maximum(unclipped, clipped)
    capped = torch.minimum(losses, -adv * clip_ratio_c)
    negative = adv < 0
    loss = aggregate(torch.where(negative, capped, losses), mask, loss_agg_mode)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        clipfrac_lower = masked_mean((negative & (losses > -adv * clip_ratio_c)).float(), mask)
        approx_kl = masked_mean(-log_ratio, mask)
    return loss, {"pg_clipfrac": clipfrac, "pg_clipfrac_lower": clipfrac_lower, "ppo_kl": approx_kl}


def distill_nll_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Consolidation: -log pi(y2 | x) averaged over the response tokens under `mask`."""
    return -masked_mean(logprobs, mask)


def _kl_value(diff: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "k1":
        return diff
    if kind == "abs":
        return diff.abs()
    if kind == "k2":
        return 0.5 * diff.square()
    # k3: the exponent is clamped before exp so that a token the policy now finds far less
    # likely than the reference does not overflow to inf (whose gradient is NaN).
    neg = (-diff).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return (torch.exp(neg) - neg - 1.0).clamp(min=-10.0, max=10.0)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    k1 = log pi - log ref; abs = |k1|; k2 = (log pi - log ref)^2 / 2; low_var_kl (k3) =
    exp(ref - pi) - (ref - pi) - 1, always >= 0, clamped to [-10, 10] for stability.
    "<kind>+": the value of <kind> with the gradient of k2 (straight-through).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kl kind must be one of {KL_KINDS}, got {kind!r}")
    straight_through = kind.endswith("+")
    base = kind.rstrip("+")
    base = KL_ALIASES.get(base, base)
    diff = logprobs - ref_logprobs
    value = _kl_value(diff, base)
    if not straight_through or base == "k2":
        return value
    k2 = 0.5 * diff.square()
    return k2 - k2.detach() + value.detach()


def token_entropy(logp_vocab: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's distribution from its log-probs over the vocabulary
    ([..., V] -> [...]); exp(-inf) * -inf is NaN, so masked-out (-inf) entries count as 0."""
    p = logp_vocab.exp()
    return -(p * logp_vocab.masked_fill(p == 0, 0.0)).sum(-1)


def loss_setting_errors(*, clip_low: float, clip_high: float, clip_ratio_c: float, kl_coef: float,
                        kl_kind: str, loss_agg_mode: str, entropy_coeff: float,
                        policy_loss_mode: str = "vanilla") -> dict[str, str]:
    """{setting: what is supported} for each value `erl_actor_loss` cannot honour (empty: all
    fine). Trainer configs map the names to their own keys and refuse the run."""
    def number(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)

    errors = {}
    for name, v in (("clip_low", clip_low), ("clip_high", clip_high), ("kl_coef", kl_coef)):
        if not number(v) or v < 0:
            errors[name] = f"a number >= 0, got {v!r}"
    if number(clip_low) and clip_low >= 1:
        errors["clip_low"] = f"a number in [0, 1) (the ratio's lower bound is 1 - clip_low), got {clip_low!r}"
    if not number(clip_ratio_c) or clip_ratio_c <= 1:
        errors["clip_ratio_c"] = f"a finite number > 1 (the dual-clip bound), got {clip_ratio_c!r}"
    if not number(entropy_coeff):
        errors["entropy_coeff"] = f"a finite number, got {entropy_coeff!r}"
    if kl_kind not in KL_KINDS:
        errors["kl_kind"] = f"one of {list(KL_KINDS)}, got {kl_kind!r}"
    if loss_agg_mode not in LOSS_AGG_MODES:
        errors["loss_agg_mode"] = f"one of {list(LOSS_AGG_MODES)}, got {loss_agg_mode!r}"
    if policy_loss_mode not in POLICY_LOSS_MODES:
        errors["policy_loss_mode"] = f"one of {list(POLICY_LOSS_MODES)}, got {policy_loss_mode!r}"
    return errors


@dataclass(frozen=True)
class LossSettings:
    """Every setting of `erl_actor_loss`, checked once. Each trainer builds one from its own
    config keys (local: `trainer.*` + `erl.*`; verl: `actor_rollout_ref.actor.*` + `erl.*`,
    before Ray starts) and hands this object to whatever computes the loss."""

    clip_low: float = 0.2
    clip_high: float = 0.28
    clip_ratio_c: float = CLIP_RATIO_C
    loss_agg_mode: str = "token-mean"
    kl_coef: float = 0.0  # 0: no KL term, and no reference log-probs are computed
    kl_kind: str = "low_var_kl"
    entropy_coeff: float = 0.0
    distill_mode: str = "sft"
    distill_coef: float = 1.0

    def __post_init__(self) -> None:
        errors = loss_setting_errors(clip_low=self.clip_low, clip_high=self.clip_high,
                                     clip_ratio_c=self.clip_ratio_c, kl_coef=self.kl_coef, kl_kind=self.kl_kind,
                                     loss_agg_mode=self.loss_agg_mode, entropy_coeff=self.entropy_coeff)
        if self.distill_mode not in DISTILL_MODES:
            errors["distill_mode"] = f"one of {list(DISTILL_MODES)}, got {self.distill_mode!r}"
        d = self.distill_coef
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
            errors["distill_coef"] = f"a finite number >= 0, got {d!r}"
        if errors:
            raise ValueError("; ".join(f"{k} must be {v}" for k, v in errors.items()))

    @property
    def uses_kl(self) -> bool:
        """The one answer to "is there a KL term?" (and so "is a reference pass needed?")."""
        return self.kl_coef > 0

    def kwargs(self) -> dict:
        return asdict(self)

    def idle_rows(self, advantages: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        """[B] bool: rows whose share of `erl_actor_loss` is exactly 0 in value and gradient
        whatever the model outputs: advantage exactly 0 (a GRPO group whose rewards all tie:
        most groups while success is rare), not an sft distillation row (those carry the NLL),
        and no KL or entropy term (those act on every token). A trainer may skip their forward
        and backward passes; the step's gradient is unchanged as long as its normalisation
        still counts them (`loss_units` over all rows)."""
        if self.uses_kl or self.entropy_coeff != 0:
            return torch.zeros(advantages.shape[0], dtype=torch.bool)
        distill = segment_ids == DISTILL_ID if self.distill_mode == "sft" else torch.zeros_like(segment_ids, dtype=torch.bool)
        return (advantages == 0) & ~distill


def needs_old_logprobs(ppo_epochs: int) -> bool:
    """Whether an update needs a forward pass for the old log-probs. With one epoch (both trainers
    update once per epoch, on the whole step) the policy being updated is the one that sampled,
    so the old log-probs are the current ones (ratio 1) and erl_actor_loss takes None for them."""
    return ppo_epochs > 1


def erl_actor_loss(*args, **kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    """erl_actor_terms with its metrics as floats (each a wait for the device)."""
    total, metrics = erl_actor_terms(*args, **kwargs)
    return total, floats(metrics)


def erl_actor_terms(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, advantages: torch.Tensor,
                    response_mask: torch.Tensor, segment_ids: torch.Tensor, *, distill_mode: str = "sft",
                    distill_coef: float = 1.0, clip_low: float = 0.2, clip_high: float = 0.28,
                    clip_ratio_c: float = CLIP_RATIO_C, ref_logprobs: torch.Tensor | None = None,
                    kl_coef: float = 0.0, kl_kind: str = "low_var_kl", loss_agg_mode: str = "token-mean",
                    entropy: torch.Tensor | None = None, entropy_coeff: float = 0.0,
                    has_distill: bool | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """policy-gradient loss + kl_coef * KL - entropy_coeff * entropy + distill_coef * NLL.

    sft mode: distill rows are excluded from the policy-gradient term (so they do not
    dilute its token mean) and trained by the NLL term alone. raft mode: distill rows
    are ordinary policy-gradient rows (their advantage is max(r2, 0)); no NLL term.
    The KL and entropy terms cover every generated token, as in verl. `entropy` is the
    per-token entropy [B, T], needed only when entropy_coeff != 0. `old_logprobs` None: an
    on-policy update (needs_old_logprobs), whose old policy is the current one. Metrics are
    detached 0-dim tensors, so a trainer can sum them over micro-batches without waiting for
    the device; `has_distill`: whether a distillation row has a trained token, if the caller
    knows (None: read from the tensors, which waits).
    """
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    mask = response_mask.to(logprobs.dtype)
    is_distill = (segment_ids == DISTILL_ID).to(logprobs.dtype).unsqueeze(-1)
    if distill_mode == "sft":
        pg_mask, sft_mask = mask * (1.0 - is_distill), mask * is_distill
    elif distill_mode in ("raft", "none"):
        pg_mask, sft_mask = mask, torch.zeros_like(mask)
    else:
        raise ValueError(f"distill_mode must be sft, raft or none, got {distill_mode!r}")
    pg_loss, metrics = ppo_clip_terms(logprobs, old_logprobs, advantages, pg_mask, clip_low, clip_high,
                                     loss_agg_mode, clip_ratio_c)
    total = pg_loss
    metrics["pg_loss"] = pg_loss.detach()
    if ref_logprobs is not None and kl_coef > 0:
        kl = aggregate(kl_penalty(logprobs, ref_logprobs, kl_kind), mask, loss_agg_mode)
        total = total + kl_coef * kl
        metrics["kl"] = kl.detach()
    if entropy_coeff != 0:
        if entropy is None:
            raise ValueError("erl_actor_loss: entropy_coeff != 0 needs the per-token entropy")
        ent = aggregate(entropy, mask, loss_agg_mode)
        total = total - entropy_coeff * ent
        metrics["entropy"] = ent.detach()
    elif entropy is not None:
        metrics["entropy"] = aggregate(entropy.detach(), mask, loss_agg_mode)
    if has_distill is None:
        has_distill = bool(sft_mask.any())
    if distill_mode == "sft" and has_distill:
        nll = distill_nll_loss(logprobs, sft_mask)
        total = total + distill_coef * nll
        metrics["distill_nll"] = nll.detach()
    metrics["total"] = total.detach()
    return total, metrics


def loss_units(row_tokens: Sequence[int], loss_agg_mode: str) -> int:
    """How much a micro-batch counts in its step's loss, given its rows' trained-token counts:
    its tokens under token-mean, its rows that have a trained token under the seq-mean modes.
    Weighing each micro-batch's loss by units / all units of the step makes the summed
    gradient the whole step's aggregate (what both trainers do when they accumulate)."""
    if loss_agg_mode == "token-mean":
        return int(sum(row_tokens))
    return sum(1 for n in row_tokens if n > 0)
