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
token-mean aggregation; the distill and KL terms are weighted the same way). The seq-mean
modes weigh it by its rows with tokens / all such rows of the mini-batch, likewise.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from erl.core.config import ConfigError, ErlConfig
from erl.core.losses import CLIP_RATIO_C, LossSettings, erl_actor_loss, loss_setting_errors, loss_units

ACTOR = "actor_rollout_ref.actor"
# verl's settings that decide the actor loss, mapped to erl_actor_loss's arguments. verl's own
# policy-loss code never runs (install_loss replaces it), so this is all that a verl config can
# change about the loss; the values allowed are erl.core.losses' (configs/verl/README.md has the table).
HONOURED = {
    "clip_low": f"{ACTOR}.clip_ratio_low",  # null: clip_ratio, as in verl
    "clip_high": f"{ACTOR}.clip_ratio_high",  # null: clip_ratio
    "clip_ratio_c": f"{ACTOR}.clip_ratio_c",
    "loss_agg_mode": f"{ACTOR}.loss_agg_mode",
    "kl_coef": f"{ACTOR}.kl_loss_coef",  # used when use_kl_loss is true
    "kl_kind": f"{ACTOR}.kl_loss_type",
    "entropy_coeff": f"{ACTOR}.entropy_coeff",
    "policy_loss_mode": f"{ACTOR}.policy_loss.loss_mode",
}
# Settings that verl's loss or advantage code would act on and ERL's has no counterpart for:
# only the neutral value is accepted (key -> (neutral value, why)).
NEUTRAL = {
    f"{ACTOR}.loss_scale_factor": (None, "it only scales seq-mean-token-sum-norm, which ERL does not implement"),
    "algorithm.adv_estimator": ("grpo", "ERL computes GRPO advantages itself, per task and segment"),
    "algorithm.use_kl_in_reward": (False, "ERL's rewards carry no KL penalty; use actor.use_kl_loss"),
    "algorithm.rollout_correction.rollout_is": (None, "ERL's loss applies no rollout importance weights"),
    "algorithm.rollout_correction.rollout_rs": (None, "ERL's loss applies no rollout rejection sampling"),
    "algorithm.rollout_correction.bypass_mode": (False, "ERL's loss uses recomputed old log-probs, or none when on-policy"),
}


def _get(cfg: dict, dotted: str, default: Any) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def loss_settings(cfg: dict, erl: ErlConfig) -> LossSettings:
    """The loss's settings from the plain (resolved) config's actor section and the validated
    `erl:` section. Any value the ERL loss would not honour raises ConfigError naming the key
    (erl.trainers.verl.config.validate calls this before Ray starts and keeps the result in
    Settings.loss, the object the workers get). Missing keys take verl's defaults."""
    actor = cfg["actor_rollout_ref"]["actor"]
    clip = actor.get("clip_ratio", 0.2)
    values = {
        "clip_low": clip if actor.get("clip_ratio_low") is None else actor["clip_ratio_low"],
        "clip_high": clip if actor.get("clip_ratio_high") is None else actor["clip_ratio_high"],
        "clip_ratio_c": actor.get("clip_ratio_c", CLIP_RATIO_C),
        "loss_agg_mode": actor.get("loss_agg_mode", "token-mean"),
        "kl_coef": actor.get("kl_loss_coef", 0.001), "kl_kind": actor.get("kl_loss_type", "low_var_kl"),
        "entropy_coeff": actor.get("entropy_coeff", 0.0),
        "policy_loss_mode": _get(actor, "policy_loss.loss_mode", "vanilla"),
    }
    errors = [f"{HONOURED[k]} must be {v}" for k, v in loss_setting_errors(**values).items()]
    use_kl = actor.get("use_kl_loss", False)
    if not isinstance(use_kl, bool):
        errors.append(f"{ACTOR}.use_kl_loss must be true or false, got {use_kl!r}")
    for key, (neutral, why) in NEUTRAL.items():
        got = _get(cfg, key, neutral)
        if got != neutral:
            errors.append(f"{key} must be {neutral!r} ({why}), got {got!r}")
    if errors:
        raise ConfigError("; ".join(errors))
    del values["policy_loss_mode"]  # only vanilla exists: erl_actor_loss has no switch for it
    return LossSettings(clip_low=float(values["clip_low"]), clip_high=float(values["clip_high"]),
                        clip_ratio_c=float(values["clip_ratio_c"]), loss_agg_mode=values["loss_agg_mode"],
                        kl_coef=float(values["kl_coef"]) if use_kl else 0.0, kl_kind=values["kl_kind"],
                        entropy_coeff=float(values["entropy_coeff"]),
                        distill_mode=erl.distill_mode, distill_coef=float(erl.distill_coef))


def _non_tensor(data: Any, key: str, default: Any) -> Any:
    try:
        value = data[key]
    except KeyError:
        return default
    return default if value is None else value


def erl_verl_loss(model_output: dict, data: Any, dp_group: Any = None, *, settings: LossSettings):
    """One micro-batch: ERL actor loss on verl's tensors. Returns (loss, metrics)."""
    from verl.workers.utils.padding import no_padding_2_padding

    logprobs = no_padding_2_padding(model_output["log_probs"], data).float()  # [b, R]
    entropy = model_output.get("entropy")  # present when the update asked for calculate_entropy
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data).float()
    present = set(data.keys())
    keys = ["response_mask", "advantages", "segment_ids"] + [k for k in ("old_log_probs", "ref_log_prob") if k in present]
    sel = data.select(*keys).to_padded_tensor()
    mask = sel["response_mask"].to(logprobs.dtype)
    adv = sel["advantages"].to(logprobs.dtype)
    ref = sel["ref_log_prob"].float() if "ref_log_prob" in keys and settings.uses_kl else None
    old = sel["old_log_probs"].float() if "old_log_probs" in keys else None  # None: on-policy (needs_old_logprobs)
    loss, metrics = erl_actor_loss(logprobs, old, adv, mask, sel["segment_ids"],
                                   ref_logprobs=ref, entropy=entropy, **settings.kwargs())
    # token-mean: this micro-batch's share of the mini-batch's tokens; seq-mean modes: its
    # share of the rows that have tokens (global_batch_size counts those rows, see trainer.update)
    local = float(loss_units(mask.sum(-1).tolist(), settings.loss_agg_mode))
    total_key = "batch_num_tokens" if settings.loss_agg_mode == "token-mean" else "global_batch_size"
    total = float(_non_tensor(data, total_key, 0) or 0)
    dp_size = int(_non_tensor(data, "dp_size", 1) or 1)
    scale = local / total * dp_size if total > 0 else 1.0
    metrics = {f"erl/{k}": v for k, v in metrics.items()}
    metrics["erl/loss_scale"] = scale
    return loss * scale, metrics


def make_loss_fn(settings: LossSettings):
    """A picklable loss function for `actor_rollout_wg.set_loss_fn` (a module-level function
    with the validated settings bound, so Ray ships it to every worker)."""
    return partial(erl_verl_loss, settings=settings)


def install_loss(actor_rollout_wg: Any, settings: LossSettings) -> None:
    """Replace verl's PPO loss on every actor worker with ERL's."""
    actor_rollout_wg.set_loss_fn(make_loss_fn(settings))
