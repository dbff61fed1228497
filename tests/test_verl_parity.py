"""ERL's loss math against verl's own `core_algos` / `ppo_loss`, the code a verl user expects to
run (ERL replaces it with `set_loss_fn`). Seeded random inputs with padding, masked env tokens,
extreme log-ratios, groups of one and zero-variance groups; verl's ActorConfig is built from
the project's composed frozenlake_erl config. Differences by design are asserted as such."""

import dataclasses
import functools

import numpy as np
import pytest
import torch

core_algos = pytest.importorskip(
    "verl.trainer.ppo.core_algos", reason="verl is not importable (CI installs it with the [verl] extra)")

from erl.core.advantages import grpo_advantages
from erl.core.losses import KL_KINDS, LOSS_AGG_MODES, aggregate, kl_penalty, ppo_clip_loss
from erl.core.types import Segment, TokenSample
from erl.trainers.verl.config import compose, validate
from erl.trainers.verl.loss import erl_verl_loss

TOL = 1e-5
A = "actor_rollout_ref.actor"


@functools.cache
def configs(*overrides: str):
    """(verl's real actor config, ERL's loss settings) from one composed config."""
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose("frozenlake_erl", list(overrides))
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor), validate(cfg, False).loss


def _inputs(seed: int, B: int = 12, T: int = 9):
    """Padded [B, T] log-probs, old log-probs, advantages, mask. Row 0 is full, row 1 has no
    trained token; elsewhere random lengths with masked env tokens inside. Log-ratios are spread
    (std 0.8) past both clip bounds and the dual-clip bound ln 3, and two reach +-30 (clamped)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T) < lengths[:, None]).float() * (torch.rand(B, T, generator=g) > 0.2).float()
    mask[0], mask[1] = 1.0, 0.0
    logp = -3.0 * torch.rand(B, T, generator=g)
    old = logp + 0.8 * torch.randn(B, T, generator=g)
    old[0, 0], old[2, 0] = logp[0, 0] - 30.0, logp[2, 0] + 30.0
    adv = torch.randn(B, generator=g)[:, None].expand(B, T).clone()
    return logp, old, adv, mask


def _grad(fn, x):
    x = x.clone().requires_grad_(True)
    out = fn(x)
    loss = out[0] if isinstance(out, tuple) else out
    loss.sum().backward()
    return out, x.grad


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_policy_loss_value_gradient_and_metrics(mode):
    cfg, s = configs()
    assert (s.clip_low, s.clip_high, s.clip_ratio_c) == (cfg.clip_ratio_low, cfg.clip_ratio_high,
                                                                  cfg.clip_ratio_c)
    lower_hits = 0.0
    for seed in range(4):
        logp, old, adv, mask = _inputs(seed)
        ours_fn = functools.partial(ppo_clip_loss, old_logprobs=old, advantages=adv, mask=mask,
                                    clip_low=s.clip_low, clip_high=s.clip_high, loss_agg_mode=mode,
                                    clip_ratio_c=s.clip_ratio_c)
        verl_fn = functools.partial(core_algos.compute_policy_loss_vanilla, old, advantages=adv, response_mask=mask,
                                    loss_agg_mode=mode, config=cfg)
        (ours, m), g_ours = _grad(ours_fn, logp)
        (theirs, vm), g_verl = _grad(verl_fn, logp)
        assert float(ours.detach()) == pytest.approx(float(theirs.detach()), abs=TOL)
        assert torch.allclose(g_ours, g_verl, atol=TOL) and torch.isfinite(g_ours).all()
        for k in ("pg_clipfrac", "ppo_kl", "pg_clipfrac_lower"):
            assert m[k] == pytest.approx(vm[f"actor/{k}"], abs=TOL), k
        lower_hits += m["pg_clipfrac_lower"]
    assert lower_hits > 0  # the inputs did reach the dual-clip bound


def test_the_issue_example_dual_clip():
    cfg, s = configs()
    x, zero, adv, one = torch.log(torch.tensor([[4.0]])), torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1)
    (ours, _), g = _grad(lambda t: ppo_clip_loss(t, zero, adv, one, 0.2, 0.28, clip_ratio_c=s.clip_ratio_c), x)
    (theirs, _), gv = _grad(lambda t: core_algos.compute_policy_loss_vanilla(zero, t, adv, one, config=cfg), x)
    assert (float(ours), float(g)) == (float(theirs), float(gv)) == (pytest.approx(3.0), 0.0)


@pytest.mark.parametrize("kind", KL_KINDS)
def test_kl_kinds_value_and_gradient(kind):
    g = torch.Generator().manual_seed(7)
    ref = -3.0 * torch.rand(6, 8, generator=g)
    x = ref + 2.0 * torch.randn(6, 8, generator=g)
    x[0, :4] = ref[0, :4] + torch.tensor([-100.0, -25.0, 25.0, 100.0])  # past the +-20 clamp both ways
    ours, g_ours = _grad(lambda t: kl_penalty(t, ref, kind), x)
    theirs, g_verl = _grad(lambda t: core_algos.kl_penalty(t, ref, kind), x)
    assert torch.allclose(ours, theirs, atol=TOL, rtol=1e-6)
    assert torch.allclose(g_ours, g_verl, atol=TOL, rtol=1e-6) and torch.isfinite(g_ours).all()


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregation_modes(mode):
    _, _, _, mask = _inputs(3)
    loss_mat = torch.randn(mask.shape, generator=torch.Generator().manual_seed(3))
    loss_mat[mask == 0] = 1e3  # garbage under padding never counts
    assert float(aggregate(loss_mat, mask, mode)) == pytest.approx(float(core_algos.agg_loss(loss_mat, mask, mode)),
                                                                   abs=TOL)


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_advantages(norm_by_std):
    rng = np.random.default_rng(0)
    groups = [rng.integers(0, 2, 4).astype(float) for _ in range(6)]  # binary, some all-equal
    groups += [rng.normal(size=5) for _ in range(3)] + [np.array([0.7])] + [np.array([0.9] * 3)]
    rewards = torch.tensor(np.concatenate(groups), dtype=torch.float32)
    keys = [f"g{i}" for i, grp in enumerate(groups) for _ in grp]
    ours = grpo_advantages(rewards, keys, norm_by_std=norm_by_std, eps=1e-6)
    T = 5
    lengths = torch.tensor(rng.integers(1, T + 1, len(keys)))
    mask = (torch.arange(T) < lengths[:, None]).float()
    token_rewards = torch.zeros(len(keys), T)
    token_rewards[torch.arange(len(keys)), lengths - 1] = rewards  # outcome reward on the last token
    theirs, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, mask, np.array(keys, dtype=object),
                                                          epsilon=1e-6, norm_adv_by_std_in_grpo=norm_by_std)
    theirs = theirs[:, 0]
    start = 0
    for grp in groups:
        rows = slice(start, start + len(grp))
        start += len(grp)
        if len(grp) == 1:  # by design: a group of one keeps its raw reward; verl: r / (std 1 + eps)
            assert float(ours[rows]) == pytest.approx(0.7, abs=1e-7)
            assert float(theirs[rows]) == pytest.approx(0.7 / (1 + 1e-6) if norm_by_std else 0.7, abs=1e-7)
        elif np.all(grp == grp[0]):  # by design: exactly 0; verl: (r - mean) / (std + eps), rounding noise
            assert ours[rows].tolist() == [0.0] * len(grp)
            if grp[0] == 0.9 and norm_by_std:  # float32 mean of 3 x 0.9 is off by an ulp: noise / 1e-6
                assert 0.01 < float(theirs[rows].abs().max()) < 0.1
            else:
                assert theirs[rows].abs().max() < 1e-6
        else:
            assert torch.allclose(ours[rows], theirs[rows], atol=TOL), grp
    assert start == len(keys)


def _engine_batch(seed: int):
    """A random micro-batch in verl's engine layout (as in test_verl_loss): TokenSamples of random
    prompt / response lengths with masked env tokens, old / ref log-probs, advantages, and the
    model output (log-probs, entropy) as nested tensors."""
    from erl.trainers.verl.dataproto import samples_to_dataproto, to_engine_tensordict

    g = torch.Generator().manual_seed(seed)
    B = 6
    rows = []
    for _ in range(B):
        p, r = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(1, 7, (1,), generator=g))
        rmask = [1] + (torch.rand(r - 1, generator=g) > 0.25).long().tolist()
        rows.append(TokenSample(prompt_ids=[1] * p, response_ids=[2] * r, response_mask=rmask, logprobs=[0.0] * r,
                                segment=Segment.ATTEMPT1, task_id="t"))
    data = samples_to_dataproto(rows, pad_id=0)
    R = data.batch["responses"].shape[1]
    new = -3.0 * torch.rand(B, R, generator=g)
    data.batch["old_log_probs"] = new + 0.8 * torch.randn(B, R, generator=g)
    data.batch["ref_log_prob"] = new + 0.5 * torch.randn(B, R, generator=g)
    data.batch["advantages"] = torch.randn(B, generator=g)[:, None].expand(B, R).clone()
    entropy = 3.0 * torch.rand(B, R, generator=g)
    tokens = int(data.batch["response_mask"].sum())
    td = to_engine_tensordict(data, temperature=1.0, batch_num_tokens=3 * tokens, dp_size=2, global_batch_size=2 * B)

    def nested(values):  # verl's layout: a row's real tokens, the value of token t+1 at position t
        seqs = []
        for i, s in enumerate(rows):
            p, r = len(s.prompt_ids), len(s.response_ids)
            v = torch.zeros(p + r)
            v[p - 1:p - 1 + r] = values[i, :r]
            seqs.append(v)
        return torch.nested.as_nested_tensor(seqs, layout=torch.jagged)

    return {"log_probs": nested(new), "entropy": nested(entropy)}, td


@pytest.mark.parametrize("overrides", [
    (),
    (f"{A}.loss_agg_mode=seq-mean-token-mean", f"{A}.kl_loss_type=k2", f"{A}.entropy_coeff=0.01"),
    (f"{A}.loss_agg_mode=seq-mean-token-sum", f"{A}.kl_loss_type=k3+", f"{A}.clip_ratio_c=2.0",
     f"{A}.kl_loss_coef=0.1"),
])
def test_whole_actor_loss_matches_verls_ppo_loss(overrides):
    """The loss ERL installs and verl's own ppo_loss, from the same config, on the same engine
    micro-batch (with global-batch scaling: 2 ranks, this micro-batch a third of the tokens)."""
    from verl.workers.utils.losses import ppo_loss

    cfg, s = configs(*overrides)
    s = dataclasses.replace(s, distill_mode="none")  # no distill rows here; verl has no consolidation term
    for seed in range(3):
        out, td = _engine_batch(seed)
        ours, _ = erl_verl_loss(out, td, settings=s)
        theirs, _ = ppo_loss(cfg, out, td)
        assert float(ours) == pytest.approx(float(theirs), abs=TOL), seed
