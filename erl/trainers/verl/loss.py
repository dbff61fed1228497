"""ERL's actor loss inside verl's engine workers, installed with `set_loss_fn`.

verl calls `loss_fn(model_output, data, dp_group)` once per micro-batch and sums the
gradients of the micro-batches of a mini-batch. `data` carries every padded tensor we put
into the batch, so the per-row `segment_ids` reach the loss; the math itself is
erl.core.losses.erl_actor_loss (never re-derived here).

Scaling: erl_actor_loss averages over the micro-batch's tokens. verl's convention is a
mean over the tokens of the whole mini-batch on all data-parallel ranks, with gradients
averaged across ranks; so each micro-batch loss is weighted by
    (its response tokens / all response tokens of the mini-batch) * dp_size,
which makes the summed gradient the global token mean (exactly, for the PG term with
token-mean aggregation; the distill and KL terms are weighted the same way).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from erl.core.losses import erl_actor_loss


def loss_settings(cfg: dict) -> dict:
    """The loss's knobs, from the plain (resolved) config: verl's actor section + `erl:`."""
    actor, erl = cfg["actor_rollout_ref"]["actor"], cfg["erl"]
    use_kl = bool(actor.get("use_kl_loss", False))
    return {
        "distill_mode": erl["distill_mode"], "distill_coef": float(erl["distill_coef"]),
        "clip_low": float(actor["clip_ratio_low"]), "clip_high": float(actor["clip_ratio_high"]),
        "kl_coef": float(actor["kl_loss_coef"]) if use_kl else 0.0, "kl_kind": actor["kl_loss_type"],
        "loss_agg_mode": actor["loss_agg_mode"],
    }


def _non_tensor(data: Any, key: str, default: Any) -> Any:
    try:
        value = data[key]
    except KeyError:
        return default
    return default if value is None else value


def erl_verl_loss(model_output: dict, data: Any, dp_group: Any = None, *, settings: dict):
    """One micro-batch: ERL actor loss on verl's tensors. Returns (loss, metrics)."""
    from verl.workers.utils.padding import no_padding_2_padding

    logprobs = no_padding_2_padding(model_output["log_probs"], data).float()  # [b, R]
    keys = ["response_mask", "old_log_probs", "advantages", "segment_ids"]
    if "ref_log_prob" in data.keys():  # noqa: SIM118 - a TensorDict, not a dict
        keys.append("ref_log_prob")
    sel = data.select(*keys).to_padded_tensor()
    mask = sel["response_mask"].to(logprobs.dtype)
    adv = sel["advantages"].to(logprobs.dtype)
    ref = sel["ref_log_prob"].float() if "ref_log_prob" in keys and settings["kl_coef"] > 0 else None
    loss, metrics = erl_actor_loss(
        logprobs, sel["old_log_probs"].float(), adv, mask, sel["segment_ids"],
        distill_mode=settings["distill_mode"], distill_coef=settings["distill_coef"],
        clip_low=settings["clip_low"], clip_high=settings["clip_high"], ref_logprobs=ref,
        kl_coef=settings["kl_coef"], kl_kind=settings["kl_kind"], loss_agg_mode=settings["loss_agg_mode"])
    total_tokens = float(_non_tensor(data, "batch_num_tokens", 0) or 0)
    dp_size = int(_non_tensor(data, "dp_size", 1) or 1)
    local_tokens = float(mask.sum())
    scale = local_tokens / total_tokens * dp_size if total_tokens > 0 else 1.0
    metrics = {f"erl/{k}": v for k, v in metrics.items()}
    metrics["erl/loss_scale"] = scale
    return loss * scale, metrics


def make_loss_fn(cfg: dict):
    """A picklable loss function for `actor_rollout_wg.set_loss_fn` (a module-level function
    with its settings bound, so Ray ships it to every worker)."""
    return partial(erl_verl_loss, settings=loss_settings(cfg))


def install_loss(actor_rollout_wg: Any, cfg: dict) -> None:
    """Replace verl's PPO loss on every actor worker with ERL's."""
    actor_rollout_wg.set_loss_fn(make_loss_fn(cfg))


def reference_loss(logprobs: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                   segment_ids: torch.Tensor, settings: dict, ref: torch.Tensor | None = None):
    """The same call on plain padded tensors (the local trainer's path), for comparisons."""
    return erl_actor_loss(logprobs, old, adv, mask, segment_ids, distill_mode=settings["distill_mode"],
                          distill_coef=settings["distill_coef"], clip_low=settings["clip_low"],
                          clip_high=settings["clip_high"], ref_logprobs=ref, kl_coef=settings["kl_coef"],
                          kl_kind=settings["kl_kind"], loss_agg_mode=settings["loss_agg_mode"])
