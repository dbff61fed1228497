"""Advantages, losses and gates against numbers worked out by hand (arithmetic in comments)."""

import math

import pytest
import torch

from erl.core.advantages import DISTILL_ID, advantages_from_arrays, grpo_advantages, raft_advantages, segment_advantages
from erl.core.gating import segment_reward, should_distill, should_reflect, should_store
from erl.core.losses import (
    KL_KINDS,
    aggregate,
    distill_nll_loss,
    erl_actor_loss,
    kl_penalty,
    loss_setting_errors,
    masked_mean,
    ppo_clip_loss,
    token_entropy,
)
from erl.core.types import SEGMENT_IDS, Segment, TokenSample

A1, RF, A2, DI = (SEGMENT_IDS[s] for s in (Segment.ATTEMPT1, Segment.REFLECTION, Segment.ATTEMPT2, Segment.DISTILL))
SQRT_1_3 = math.sqrt(1 / 3)


# ---- gates -------------------------------------------------------------------------------
def test_gates_and_segment_rewards():
    assert should_reflect(0.0, 1.0) and should_reflect(0.99, 1.0) and not should_reflect(1.0, 1.0)
    assert should_store(1.0, 1.0) and not should_store(0.5, 1.0)
    assert should_distill(0.3) and not should_distill(0.0) and not should_distill(-1.0)
    assert segment_reward(Segment.ATTEMPT1, 0.2, 0.9) == 0.2
    for seg in (Segment.REFLECTION, Segment.ATTEMPT2, Segment.DISTILL):
        assert segment_reward(seg, 0.2, 0.9) == 0.9  # D, y2 and its distilled copy all get r2
    assert segment_reward(Segment.REFLECTION, 0.2, None) == 0.0  # unparseable reflection
    with pytest.raises(ValueError):
        segment_reward(Segment.ATTEMPT2, 0.2, None)


# ---- advantages ----------------------------------------------------------------------------
def test_grpo_groups_rules():
    rewards = [1, 0, 0, 1, 1, 1, 1, 0, 1, 0]
    keys = ["A|a1"] * 4 + ["A|r"] + ["A|a2"] * 2 + ["B|a1"] * 3
    adv = grpo_advantages(rewards, keys, norm_by_std=True, eps=0.0)
    # A|a1 = [1,0,0,1]: mean .5, unbiased std = sqrt(4 * .25 / 3) = sqrt(1/3) -> +-.5/sqrt(1/3) = +-0.8660
    assert adv[:4].tolist() == pytest.approx([0.8660254, -0.8660254, -0.8660254, 0.8660254], abs=1e-6)
    assert adv[4] == 1.0  # a group of one keeps its raw reward
    assert adv[5:7].tolist() == [0.0, 0.0]  # zero variance -> 0
    # B|a1 = [0,1,0]: mean 1/3, centred [-1/3, 2/3, -1/3], std = sqrt((1/9+4/9+1/9)/2) = sqrt(1/3)
    assert adv[7:].tolist() == pytest.approx([-1 / 3 / SQRT_1_3, 2 / 3 / SQRT_1_3, -1 / 3 / SQRT_1_3], abs=1e-6)
    plain = grpo_advantages(rewards, keys, norm_by_std=False)
    assert plain[7:].tolist() == pytest.approx([-1 / 3, 2 / 3, -1 / 3], abs=1e-6)
    assert plain[:4].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])


def test_grpo_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="group keys"):
        grpo_advantages([1.0, 0.0], ["a"])


def test_raft_and_distill_rows():
    assert raft_advantages([1.0, 0.4, 0.0, -0.5]).tolist() == pytest.approx([1.0, 0.4, 0.0, 0.0])
    rewards = [0.0, 1.0, 1.0, 0.6]
    tasks = ["t", "t", "t", "t"]
    segs = [A1, A1, DI, DI]
    # attempt1 [0, 1] -> mean .5, std sqrt(.5) -> -+.5/.7071 = -+.7071; distill in raft: max(r, 0)
    raft = advantages_from_arrays(rewards, tasks, segs, distill_mode="raft", eps=0.0)
    assert raft.tolist() == pytest.approx([-0.7071068, 0.7071068, 1.0, 0.6], abs=1e-6)
    sft = advantages_from_arrays(rewards, tasks, segs, distill_mode="sft", eps=0.0)
    assert sft[2:].tolist() == [0.0, 0.0]  # trained by the NLL term, not by the policy gradient
    with pytest.raises(ValueError, match="unknown segment"):
        advantages_from_arrays([1.0], ["t"], [9])


def test_segment_advantages_group_per_task_and_segment():
    def row(task, seg, r):
        return TokenSample(prompt_ids=[1], response_ids=[2], response_mask=[1], logprobs=[0.0],
                           segment=seg, task_id=task, reward=r)

    rows = [row("t1", Segment.ATTEMPT1, 0.0), row("t1", Segment.ATTEMPT1, 1.0),
            row("t1", Segment.ATTEMPT2, 1.0),  # same task, other segment: its own group of one
            row("t2", Segment.ATTEMPT1, 1.0)]
    adv = segment_advantages(rows, norm_by_std=False)
    assert adv.tolist() == pytest.approx([-0.5, 0.5, 1.0, 1.0])


# ---- losses --------------------------------------------------------------------------------
def _batch():
    """Row 0: A=+1, ratios [1.5, 0.5, pad]; row 1: A=-1, ratios [0.5, 1.5, 1.0]."""
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0], [math.log(0.5), math.log(1.5), 0.0]])
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    return logp, old, torch.tensor([1.0, -1.0]), mask


def test_ppo_clip_token_values():
    logp, old, adv, mask = _batch()
    # per token max(-A r, -A clip(r, .8, 1.28)):
    #   row0: r=1.5 -> max(-1.5, -1.28) = -1.28 (clipped); r=.5 -> max(-.5, -.8) = -.5
    #   row1: r=.5 -> max(.5, .8) = .8 (clipped); r=1.5 -> max(1.5, 1.28) = 1.5; r=1 -> 1
    # token-mean = (-1.28 - .5 + .8 + 1.5 + 1) / 5 = 1.52 / 5 = .304
    loss, m = ppo_clip_loss(logp, old, adv, mask, 0.2, 0.28, "token-mean")
    assert float(loss) == pytest.approx(0.304, abs=1e-6)
    assert m["pg_clipfrac"] == pytest.approx(2 / 5)
    # seq-mean-token-mean = mean(row0 (-1.28 - .5)/2 = -.89, row1 (.8 + 1.5 + 1)/3 = 1.1) = .105
    loss2, _ = ppo_clip_loss(logp, old, adv, mask, 0.2, 0.28, "seq-mean-token-mean")
    assert float(loss2) == pytest.approx(0.105, abs=1e-6)


def test_seq_mean_token_sum():
    logp, old, adv, mask = _batch()
    # per-row token sums (values of test_ppo_clip_token_values): row0 -1.78, row1 3.3; mean = 0.76
    loss, _ = ppo_clip_loss(logp, old, adv, mask, 0.2, 0.28, "seq-mean-token-sum")
    assert float(loss) == pytest.approx(0.76, abs=1e-6)
    # a row without tokens is not a row of the mean: (2 + 4) / 1 row = 6
    x, m = torch.tensor([[2.0, 4.0], [7.0, 7.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert float(aggregate(x, m, "seq-mean-token-sum")) == 6.0


def _pg(logp: float, adv: float, **kw):
    """One token, old log-prob 0 (ratio e^logp): loss and d loss / d logp."""
    x = torch.tensor([[logp]], requires_grad=True)
    loss, m = ppo_clip_loss(x, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), 0.2, 0.28, **kw)
    loss.backward()
    return float(loss.detach()), float(x.grad), m


def test_dual_clip_caps_negative_advantage_tokens():
    # r = 4, A = -1: max(-A r, -A clip(r)) = max(4, 1.28) = 4, above -A * c = 3: loss 3, gradient 0
    loss, grad, m = _pg(math.log(4.0), -1.0)
    assert (loss, grad) == (pytest.approx(3.0), 0.0) and m["pg_clipfrac_lower"] == 1.0
    # with c = 5 the same token is below the cap: loss -A r = 4, gradient d(r)/d logp = r = 4
    loss, grad, m = _pg(math.log(4.0), -1.0, clip_ratio_c=5.0)
    assert (loss, grad) == (pytest.approx(4.0), pytest.approx(4.0)) and m["pg_clipfrac_lower"] == 0.0
    # r = 2, A = -0.5: 1 < 3 * 0.5 = 1.5, uncapped: loss 1, gradient -A r = 1
    loss, grad, _ = _pg(math.log(2.0), -0.5)
    assert (loss, grad) == (pytest.approx(1.0), pytest.approx(1.0))
    # a positive advantage is never dual-clipped: r = 4, A = 2 -> max(-8, -2 * 1.28) = -2.56, gradient 0
    loss, grad, m = _pg(math.log(4.0), 2.0)
    assert (loss, grad) == (pytest.approx(-2.56), 0.0) and m["pg_clipfrac_lower"] == 0.0
    with pytest.raises(ValueError, match="clip_ratio_c"):
        _pg(0.0, 1.0, clip_ratio_c=1.0)


def test_log_ratio_is_clamped_before_exp():
    # log r = 100 overflows exp in float32; clamped to 20 the token is simply clipped / capped
    loss, grad, m = _pg(100.0, 1.0)  # max(-e^20, -1.28) = -1.28
    assert (loss, grad) == (pytest.approx(-1.28), 0.0) and m["ppo_kl"] == -20.0
    loss, grad, _ = _pg(100.0, -1.0)  # dual-clip: 3
    assert (loss, grad) == (pytest.approx(3.0), 0.0)


def test_padding_never_counts():
    logp, old, adv, mask = _batch()
    logp2 = logp.clone()
    logp2[0, 2] = 50.0  # garbage under the pad position of row 0
    assert float(ppo_clip_loss(logp2, old, adv, mask)[0]) == pytest.approx(float(ppo_clip_loss(logp, old, adv, mask)[0]))
    assert float(masked_mean(torch.ones(2, 2), torch.zeros(2, 2))) == 0.0  # empty mask: 0, not NaN
    with pytest.raises(ValueError):
        aggregate(torch.ones(1, 1), torch.ones(1, 1), "sum")


def test_kl_estimators():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-2.0]])
    # diff = 1: k1 = 1, k2 = 1/2, k3 = e^-1 + 1 - 1 = .367879
    assert float(kl_penalty(logp, ref, "k1")) == pytest.approx(1.0)
    assert float(kl_penalty(logp, ref, "k2")) == pytest.approx(0.5)
    assert float(kl_penalty(logp, ref, "low_var_kl")) == pytest.approx(math.exp(-1), abs=1e-6)
    assert float(kl_penalty(ref, ref, "low_var_kl")) == 0.0
    assert float(kl_penalty(ref, logp, "abs")) == 1.0  # |-1|
    for alias, kind in (("kl", "k1"), ("mse", "k2"), ("k3", "low_var_kl")):  # verl's names
        assert float(kl_penalty(logp, ref, alias)) == float(kl_penalty(logp, ref, kind))
    with pytest.raises(ValueError, match="kl kind"):
        kl_penalty(logp, ref, "full")


def _kl_grad(x: float, kind: str):
    t = torch.tensor([[x]], requires_grad=True)
    value = kl_penalty(t, torch.zeros(1, 1), kind)
    value.sum().backward()
    return float(value.detach()), float(t.grad)


def test_low_var_kl_is_clamped_and_straight_through_variants():
    # x = -1, ref = 0: k3 = e^1 - 1 - 1 = 0.718282, d/dx (e^-x + x - 1) = 1 - e^-x = 1 - e = -1.718282
    assert _kl_grad(-1.0, "low_var_kl") == (pytest.approx(math.e - 2), pytest.approx(1 - math.e))
    # x = -100: ref - x = 100 is clamped to 20 before exp (e^100 is inf in float32 and its gradient NaN);
    # e^20 - 21 is then clamped to 10: value 10, gradient 0
    assert _kl_grad(-100.0, "low_var_kl") == (10.0, 0.0)
    # "+": the value of k3, the gradient of k2 = (x - ref)^2 / 2, i.e. x - ref = -1
    assert _kl_grad(-1.0, "low_var_kl+") == (pytest.approx(math.e - 2), pytest.approx(-1.0))
    assert _kl_grad(3.0, "k1+") == (3.0, 3.0) and _kl_grad(3.0, "k2+") == (4.5, 3.0)
    assert {"k1", "k2", "low_var_kl", "abs", "kl", "mse", "k3", "k3+"} <= set(KL_KINDS)


def test_entropy_bonus():
    # entropies: [.5, .5] -> ln 2; [1, 0] -> 0 (the 0 * log 0 term counts as 0, not NaN)
    ent = token_entropy(torch.log(torch.tensor([[0.5, 0.5], [1.0, 0.0]])))
    assert ent.tolist() == pytest.approx([math.log(2), 0.0])
    logp, old, adv, mask = _batch()
    segs = torch.tensor([A1, A2])
    entropy = torch.tensor([[1.0, 2.0, 99.0], [0.5, 0.5, 0.5]])  # 99 sits under padding
    # token-mean entropy = (1 + 2 + 1.5) / 5 = 0.9; total = pg .304 - 0.1 * 0.9 = 0.214
    loss, m = erl_actor_loss(logp, old, adv, mask, segs, entropy=entropy, entropy_coeff=0.1)
    assert float(loss) == pytest.approx(0.214, abs=1e-6) and m["entropy"] == pytest.approx(0.9)
    # entropy given but coefficient 0: reported, not in the loss
    loss0, m0 = erl_actor_loss(logp, old, adv, mask, segs, entropy=entropy)
    assert float(loss0) == pytest.approx(0.304, abs=1e-6) and m0["entropy"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="entropy"):
        erl_actor_loss(logp, old, adv, mask, segs, entropy_coeff=0.1)


def test_loss_setting_errors_name_each_unsupported_value():
    ok = {"clip_low": 0.2, "clip_high": 0.28, "clip_ratio_c": 3.0, "kl_coef": 0.001, "kl_kind": "low_var_kl",
          "loss_agg_mode": "token-mean", "entropy_coeff": 0.0}
    assert loss_setting_errors(**ok) == {}
    bad = {"clip_low": 1.0, "clip_high": -0.1, "clip_ratio_c": 1.0, "kl_coef": True, "kl_kind": "full",
           "loss_agg_mode": "token-sum", "entropy_coeff": float("nan")}
    errors = loss_setting_errors(**bad, policy_loss_mode="gspo")
    assert set(errors) == set(bad) | {"policy_loss_mode"}
    assert "seq-mean-token-sum" in errors["loss_agg_mode"] and "vanilla" in errors["policy_loss_mode"]
    assert "> 1" in errors["clip_ratio_c"]


def _with_distill_row():
    logp, old, adv, mask = _batch()
    logp = torch.cat([logp, torch.tensor([[-0.1, -0.3, 0.0]])])
    old = torch.cat([old, torch.tensor([[-0.1, -0.3, 0.0]])])  # ratio 1 on the distill row
    mask = torch.cat([mask, torch.tensor([[1.0, 1.0, 0.0]])])
    segs = torch.tensor([A1, A2, DI])
    return logp, old, adv, mask, segs


def test_erl_loss_sft_mode():
    logp, old, adv, mask, segs = _with_distill_row()
    adv = torch.cat([adv, torch.tensor([0.0])])
    # PG over rows 0-1 only = .304; NLL on the distill row = (.1 + .3)/2 = .2; total = .304 + .5 * .2 = .404
    loss, m = erl_actor_loss(logp, old, adv, mask, segs, distill_mode="sft", distill_coef=0.5)
    assert float(loss) == pytest.approx(0.404, abs=1e-6)
    assert m["pg_loss"] == pytest.approx(0.304, abs=1e-6) and m["distill_nll"] == pytest.approx(0.2)
    assert float(distill_nll_loss(logp, mask * torch.tensor([[0.0], [0.0], [1.0]]))) == pytest.approx(0.2)


def test_erl_loss_sft_gradients_stay_in_their_rows():
    logp, old, adv, mask, segs = _with_distill_row()
    adv = torch.tensor([0.0, 0.0, 0.0])  # no policy-gradient signal at all
    logp = logp.clone().requires_grad_(True)
    loss, _ = erl_actor_loss(logp, old, adv, mask, segs, distill_mode="sft", distill_coef=1.0)
    loss.backward()
    # d/dlogp of -(l0 + l1)/2 on the distill row = -1/2 per unmasked token, 0 everywhere else
    assert logp.grad[2].tolist() == pytest.approx([-0.5, -0.5, 0.0])
    assert logp.grad[:2].abs().sum() == 0


def test_erl_loss_raft_mode_and_kl():
    logp, old, adv, mask, segs = _with_distill_row()
    adv = torch.cat([adv, torch.tensor([1.0])])  # RAFT advantage max(r2, 0) = 1 on the distill row
    # distill tokens: ratio 1, A = 1 -> -1 each; token-mean = (1.52 - 2) / 7 = -.0685714
    loss, m = erl_actor_loss(logp, old, adv, mask, segs, distill_mode="raft")
    assert float(loss) == pytest.approx(-0.48 / 7, abs=1e-6) and "distill_nll" not in m
    ref = logp - 1.0  # diff = 1 on every token -> k1 = 1 everywhere -> +kl_coef * 1
    loss_kl, m2 = erl_actor_loss(logp, old, adv, mask, segs, distill_mode="raft", ref_logprobs=ref,
                                 kl_coef=0.1, kl_kind="k1")
    assert float(loss_kl) == pytest.approx(-0.48 / 7 + 0.1, abs=1e-6) and m2["kl"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="distill_mode"):
        erl_actor_loss(logp, old, adv, mask, segs, distill_mode="bogus")
    assert DISTILL_ID == DI


def test_task_stream_is_a_permutation_per_epoch_and_resumable():
    from erl.core.stream import next_tasks, task_index

    first = [task_index(5, 0, p) for p in range(5)]
    assert sorted(first) == [0, 1, 2, 3, 4]  # every task once per epoch
    assert sorted(task_index(5, 0, p) for p in range(5, 10)) == [0, 1, 2, 3, 4]
    a, cur = next_tasks(list("abcde"), 7, 0, 3)
    b, cur = next_tasks(list("abcde"), 7, cur, 4)  # crosses into epoch 2
    whole, _ = next_tasks(list("abcde"), 7, 0, 7)
    assert a + b == whole and cur == 7
    with pytest.raises(ValueError):
        task_index(0, 0, 0)


def test_memory_store_totals_never_overwrite_step_metrics():
    from erl.core.metrics import memory_store_metrics

    out = memory_store_metrics({"size": 3, "hits": 41, "hit_rate": 0.5}, {"memory/hits": 0.75})
    assert out == {"memory/size": 3.0, "memory/total_hits": 41.0, "memory/hit_rate": 0.5}


def test_every_config_section_refuses_a_misspelt_key_by_name():
    from erl.core.config import ConfigError, ErlConfig, check_keys

    assert check_keys("model.lora", {"r": 8}, ("r", "alpha")) == {"r": 8}
    assert check_keys("erl", None, ErlConfig) == {}
    with pytest.raises(ConfigError, match=r"model\.lora: unknown key\(s\) \['rank'\]; known keys: \['alpha', 'r'\]"):
        check_keys("model.lora", {"rank": 8}, ("r", "alpha"))
    with pytest.raises(ConfigError, match=r"erl: unknown key\(s\) \['n_atempt'\]"):  # the dataclass's fields
        ErlConfig.from_dict({"n_atempt": 2})
    with pytest.raises(ConfigError, match=r"\['n_atempt'\] \(did you mean: n_atempt -> n_attempt\?\); known keys"):
        ErlConfig.from_dict({"n_atempt": 2})


def test_closest_keys_by_whole_name_then_by_last_part():
    from erl.core.config import closest_keys

    keys = ["trainer.total_steps", "trainer.lr", "trainer.save_every", "model.lora.r", "env.name", "seed"]
    # siblings by last part: "step" shared by stepz/total_steps: 2*4/(5+11) = 0.5 >= 0.5;
    # save_every: 2*2/15 < 0.5 (s, e)
    assert closest_keys("trainer.stepz", keys) == ["trainer.total_steps"]
    # no top-level key near "lr" ("seed": 0); the same last part elsewhere
    assert closest_keys("lr", keys) == ["trainer.lr"]
    assert closest_keys("trainer.zzz", keys) == []


def test_loss_settings_checked_once():
    from erl.core.losses import LossSettings

    s = LossSettings(kl_coef=0.001, distill_mode="raft")
    assert s.uses_kl and not LossSettings().uses_kl
    assert s.kwargs()["distill_mode"] == "raft" and s.kwargs()["kl_coef"] == 0.001
    with pytest.raises(ValueError, match=r"clip_low must be a number in \[0, 1\).*distill_coef must be a finite"):
        LossSettings(clip_low=1.5, distill_coef=float("nan"))
    with pytest.raises(ValueError, match=r"distill_mode must be one of \['sft', 'raft', 'none'\]"):
        LossSettings(distill_mode="sfT")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_match_log_softmax_in_value_and_gradient(dtype):
    from erl.core.logprobs import token_logprobs

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 5, 11, generator=g) * 3).to(dtype)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    weights = torch.randn(2, 5, generator=g)
    ref_in = logits.detach().float().requires_grad_()
    ref = torch.log_softmax(ref_in, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    (ref * weights).sum().backward()
    x = logits.detach().requires_grad_()
    got = token_logprobs(x, labels, chunk_rows=3)  # 10 rows: chunks of 3, 3, 3, 1
    (got * weights).sum().backward()
    assert got.dtype == torch.float32 and got.shape == (2, 5)
    torch.testing.assert_close(got, ref.detach(), atol=1e-6, rtol=0)
    # bf16 logits round the gradient to bf16 on the way out; fp32 keeps it exact
    torch.testing.assert_close(x.grad.float(), ref_in.grad, atol=1e-6 if dtype == torch.float32 else 4e-3, rtol=0)
    # by hand, one row: logits (0, ln 3) -> p = (1/4, 3/4); d log p1 / d x = onehot - p
    two = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    lp = token_logprobs(two, torch.tensor([1]))
    lp.sum().backward()
    assert lp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert two.grad[0].tolist() == pytest.approx([-0.25, 0.25], abs=1e-6)
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(logits, labels[:, :4])
