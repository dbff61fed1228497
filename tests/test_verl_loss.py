"""ERL's loss installed in verl: the function verl's engine calls, on a synthetic micro-batch,
equals the value worked out by hand."""

import math

import pytest
import torch

pytest.importorskip("verl")

from erl.core.config import ErlConfig
from erl.core.types import Segment, TokenSample
from erl.trainers.verl.dataproto import samples_to_dataproto, to_engine_tensordict
from erl.trainers.verl.loss import erl_verl_loss, loss_settings, make_loss_fn


def _cfg(kl: bool = False, kl_coef: float = 0.1, mode: str = "sft", **actor):
    return {"actor_rollout_ref": {"actor": {"use_kl_loss": kl, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28,
                                            "kl_loss_coef": kl_coef, "kl_loss_type": "low_var_kl",
                                            "loss_agg_mode": "token-mean", **actor}},
            "erl": {"distill_mode": mode, "distill_coef": 1.0}}


def _settings(**kw):
    cfg = _cfg(**kw)
    return loss_settings(cfg, ErlConfig.from_dict(cfg["erl"]))


def _micro_batch(batch_num_tokens: int, dp_size: int, ref: bool = False, global_batch_size: int | None = None):
    """Row A: attempt1, 2 model tokens, advantage +1, old p = .5/.5, new p = .6/.4.
    Row B: distill, 1 model token, new p = .5."""
    rows = [TokenSample(prompt_ids=[1, 2], response_ids=[3, 4], response_mask=[1, 1], logprobs=[0.0, 0.0],
                        segment=Segment.ATTEMPT1, task_id="t"),
            TokenSample(prompt_ids=[1], response_ids=[5], response_mask=[1], logprobs=[0.0],
                        segment=Segment.DISTILL, task_id="t")]
    data = samples_to_dataproto(rows, pad_id=0)
    ln = math.log
    data.batch["old_log_probs"] = torch.tensor([[ln(0.5), ln(0.5)], [ln(0.5), 0.0]])
    data.batch["advantages"] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    if ref:
        data.batch["ref_log_prob"] = data.batch["old_log_probs"].clone()
    td = to_engine_tensordict(data, temperature=1.0, batch_num_tokens=batch_num_tokens, dp_size=dp_size,
                              global_batch_size=global_batch_size)
    # verl's engine returns per-token log-probs over each row's real tokens, the log-prob of
    # token t+1 stored at position t (so a response token's value sits one place earlier).
    new = [[ln(0.6), ln(0.4)], [ln(0.5)]]
    seqs = []
    for (p, resp) in ((2, new[0]), (1, new[1])):
        v = torch.zeros(p + len(resp))
        v[p - 1:p - 1 + len(resp)] = torch.tensor(resp)
        seqs.append(v)
    # entropy in the same layout: 1.0 and 2.0 on row A's tokens, 0.5 on row B's
    ents = [torch.tensor([0.0, 1.0, 2.0, 0.0]), torch.tensor([0.5, 0.0])]
    out = {"log_probs": torch.nested.as_nested_tensor(seqs, layout=torch.jagged),
           "entropy": torch.nested.as_nested_tensor(ents, layout=torch.jagged)}
    return out, td


def test_loss_equals_hand_computed_value():
    out, td = _micro_batch(batch_num_tokens=3, dp_size=1)
    loss, metrics = erl_verl_loss(out, td, settings=_settings())
    # ratios 0.6/0.5 = 1.2 and 0.4/0.5 = 0.8, both inside [0.8, 1.28]: pg terms -1.2, -0.8,
    # token mean over the attempt row's 2 tokens = -1.0 (the distill row is out of the PG mean).
    # consolidation NLL on the distill token: -ln 0.5 = 0.693147; total = -1 + 0.693147.
    assert metrics["erl/pg_loss"] == pytest.approx(-1.0, abs=1e-6)
    assert metrics["erl/distill_nll"] == pytest.approx(math.log(2), abs=1e-6)
    assert loss.item() == pytest.approx(-1.0 + math.log(2), abs=1e-6)


def test_on_policy_update_without_old_log_probs_has_ratio_one():
    """No old_log_probs (the trainer skips their pass for one epoch over one mini-batch): the old
    policy is the current one. Row A's pg terms are -A x 1 = -1 each, the same loss as with
    old_log_probs equal to the new ones, and nothing is clipped."""
    out, td = _micro_batch(batch_num_tokens=3, dp_size=1)
    del td["old_log_probs"]
    loss, m = erl_verl_loss(out, td, settings=_settings())
    assert m["erl/pg_loss"] == pytest.approx(-1.0, abs=1e-6) and m["erl/pg_clipfrac"] == 0.0
    assert loss.item() == pytest.approx(-1.0 + math.log(2), abs=1e-6)
    out2, td2 = _micro_batch(batch_num_tokens=3, dp_size=1)
    td2["old_log_probs"] = torch.tensor([[math.log(0.6), math.log(0.4)], [math.log(0.5), 0.0]])
    loss2, m2 = erl_verl_loss(out2, td2, settings=_settings())
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-6) and m2["erl/pg_clipfrac"] == 0.0


def test_loss_scaled_to_the_global_token_mean():
    # 3 tokens here, 12 in the mini-batch over 2 ranks: weight 3 / 12 * 2 = 0.5
    out, td = _micro_batch(batch_num_tokens=12, dp_size=2)
    loss, metrics = erl_verl_loss(out, td, settings=_settings())
    assert metrics["erl/loss_scale"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx(0.5 * (-1.0 + math.log(2)), abs=1e-6)


def test_kl_to_reference_and_raft_mode():
    out, td = _micro_batch(batch_num_tokens=3, dp_size=1, ref=True)
    loss, m = erl_verl_loss(out, td, settings=_settings(kl=True, kl_coef=0.1))
    # k3 = exp(ref - new) - (ref - new) - 1 per token, ref = old:
    #   0.5/0.6 - ln(0.5/0.6) - 1 = 0.015655 ; 0.5/0.4 - ln(0.5/0.4) - 1 = 0.026856 ; 0 (distill)
    # mean over the 3 model tokens = 0.014170 ; + 0.1 * that
    k3 = (0.5 / 0.6 - math.log(0.5 / 0.6) - 1 + 0.5 / 0.4 - math.log(0.5 / 0.4) - 1) / 3
    assert m["erl/kl"] == pytest.approx(k3, abs=1e-6)
    assert loss.item() == pytest.approx(-1.0 + math.log(2) + 0.1 * k3, abs=1e-6)
    # use_kl_loss false -> the reference term is off even with ref log-probs present
    loss_nokl, m2 = erl_verl_loss(out, td, settings=_settings(kl=False))
    assert "erl/kl" not in m2 and loss_nokl.item() == pytest.approx(-1.0 + math.log(2), abs=1e-6)
    # raft: the distill row joins the PG mean with its own advantage (0 here): (-1.2 - 0.8 + 0) / 3
    out, td = _micro_batch(batch_num_tokens=3, dp_size=1)
    loss_raft, m3 = erl_verl_loss(out, td, settings=_settings(mode="raft"))
    assert loss_raft.item() == pytest.approx(-2.0 / 3, abs=1e-6) and "erl/distill_nll" not in m3


def test_loss_fn_is_picklable_for_ray():
    import pickle

    fn = pickle.loads(pickle.dumps(make_loss_fn(_settings())))
    out, td = _micro_batch(batch_num_tokens=3, dp_size=1)
    assert fn(model_output=out, data=td, dp_group=None)[0].item() == pytest.approx(-1.0 + math.log(2), abs=1e-6)


def test_entropy_bonus_and_seq_mean_scaling():
    out, td = _micro_batch(batch_num_tokens=3, dp_size=1)
    loss, m = erl_verl_loss(out, td, settings=_settings(entropy_coeff=0.1))
    # token-mean entropy over all 3 model tokens = (1 + 2 + 0.5) / 3; the bonus is subtracted
    assert m["erl/entropy"] == pytest.approx(3.5 / 3)
    assert loss.item() == pytest.approx(-1.0 + math.log(2) - 0.1 * 3.5 / 3, abs=1e-6)
    # seq-mean modes: weighted by rows with tokens, 2 here of 8 in the mini-batch over 2 ranks: 2 / 8 * 2
    out, td = _micro_batch(batch_num_tokens=12, dp_size=2, global_batch_size=8)
    loss, m = erl_verl_loss(out, td, settings=_settings(loss_agg_mode="seq-mean-token-sum"))
    # PG: row A's token sum -1.2 - 0.8 = -2 (the only PG row); NLL ln 2; then x 0.5
    assert m["erl/loss_scale"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx(0.5 * (-2.0 + math.log(2)), abs=1e-6)


def test_dual_clip_reaches_the_verl_loss():
    out, td = _micro_batch(batch_num_tokens=3, dp_size=1)
    td["advantages"] = torch.nested.as_nested_tensor([torch.tensor([-1.0, -1.0]), torch.tensor([0.0])],
                                                     layout=torch.jagged)
    # A = -1 on row A, ratios 1.2 and 0.8: max(1.2, 1.2) = 1.2 and max(0.8, 0.8) = 0.8; mean 1.0.
    # With clip_ratio_c = 1.1 the 1.2 token is capped at 1.1: mean 0.95
    for c, pg in ((3.0, 1.0), (1.1, 0.95)):
        _, m = erl_verl_loss(out, td, settings=_settings(clip_ratio_c=c))
        assert m["erl/pg_loss"] == pytest.approx(pg, abs=1e-6), c


def test_fsdp_engine_computes_log_probs_in_chunks_without_flash_attn(monkeypatch):
    """Without flash-attn, verl's engine would run one log-softmax per token; importing the
    worker module (as Ray does in each worker) swaps in the chunked function, which agrees
    with verl's own fallback. Opting out (ERL_VERL_LOGPROBS=verl) leaves verl's function."""
    from verl.utils import torch_functional as verl_F
    from verl.workers.engine.fsdp import transformer_impl

    from erl.trainers.verl import workers

    if verl_F.FLAH_ATTN_CROSS_ENTROPY_LOSS_AVAILABLE:
        pytest.skip("flash-attn's fused kernel is installed: verl's path is already fast")
    assert transformer_impl.logprobs_from_logits is workers.chunked_logprobs_from_logits
    logits = torch.randn(7, 13, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(7) % 13
    torch.testing.assert_close(transformer_impl.logprobs_from_logits(logits=logits, labels=labels),
                               verl_F.logprobs_from_logits_v2(logits, labels), atol=1e-6, rtol=0)
    monkeypatch.setattr(transformer_impl, "logprobs_from_logits", verl_F.logprobs_from_logits)
    monkeypatch.setenv("ERL_VERL_LOGPROBS", "verl")
    assert workers.install_chunked_logprobs() is False
    assert transformer_impl.logprobs_from_logits is verl_F.logprobs_from_logits
