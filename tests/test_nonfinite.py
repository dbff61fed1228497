"""A non-finite loss or gradient never reaches the weights; the run counts, records and stops.

The GPU failure this guards against (RLVR, bf16, lr 3e-4, step 28): one NaN gradient was
applied, every weight became NaN, eval fell to 0.0 and sampling then asserted. Here the
NaN is injected on CPU at a chosen step, through the forward or through the backward.
"""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_local_trainer import base_cfg

from erl.core.types import Segment, TokenSample
from erl.rollout.kv import unwrap
from erl.tracking import read_metrics
from erl.trainers.driver import NonFiniteStepError
from erl.trainers.local.checkpoint import load_checkpoint
from erl.trainers.local.run import build, train


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def poison_forward(trainer, calls: set[int]):
    """NaN in the policy's logits (its LM head's output) on the chosen training forward calls
    (not rollouts)."""
    count = {"n": 0}

    def hook(module, args, output):
        if module.training:
            count["n"] += 1
            if count["n"] in calls:
                return output * float("nan")
        return output

    return unwrap(trainer.model).get_output_embeddings().register_forward_hook(hook)


def rows_with_signal() -> list[TokenSample]:
    """One task, rewards 1 and 0: advantages +-0.707, so an applied update moves the weights."""
    return [TokenSample(prompt_ids=[5, 6, 7], response_ids=[8 + k, 9, 10], response_mask=[1, 1, 1],
                        logprobs=[0.0] * 3, segment=Segment.ATTEMPT1, task_id="t", episode_id=f"t:{k}",
                        reward=float(k == 0)) for k in range(2)]


def test_nan_loss_is_skipped_and_weights_stay_bit_identical(tmp_path):
    trainer, _ = build(base_cfg(tmp_path, "rlvr", steps=3, micro_batch_size=64))
    trainer.update(rows_with_signal())  # a normal update: the weights and Adam's moments move
    before = snapshot(trainer.model)
    state = trainer.optimizer.state[next(iter(trainer.optimizer.state))]
    opt_before = {k: v.clone() for k, v in state.items()}
    handle = poison_forward(trainer, {1})  # the next update's only micro-batch
    metrics = trainer.update(rows_with_signal())
    handle.remove()
    after = snapshot(trainer.model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(torch.equal(opt_before[k], state[k]) for k in opt_before)  # Adam moments and count untouched
    assert metrics["train/skipped"] == 1.0 and trainer.skipped_steps == 1 and "loss/grad_norm" not in metrics
    facts = [json.loads(x) for x in (Path(trainer.cfg.output_dir) / "nonfinite.jsonl").read_text().splitlines()]
    assert len(facts) == 1 and facts[0]["where"] == "loss" and facts[0]["chunk"] == 0
    assert facts[0]["rows"] == 2 and facts[0]["trained_tokens"] == 6 and facts[0]["logp_finite"] is False
    # GRPO: (1 - 0.5) / (std(1, 0) + 1e-6), std with Bessel = sqrt(0.5)
    assert facts[0]["adv_abs_max"] == pytest.approx(0.5 / (0.5 ** 0.5 + 1e-6), abs=1e-6)
    # the replay re-ran the batch without the hook: every variant is finite, so the cause was the injection
    assert set(facts[0]["replay"].values()) == {True}
    # the next update trains again and resets the consecutive count
    m3 = trainer.update(rows_with_signal())
    assert m3["train/skipped"] == 0.0 and trainer.skipped_steps == 1 and trainer.consecutive_skips == 0
    assert any(not torch.equal(after[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad)
    assert trainer.step()["train/skipped_steps"] == 1.0


def test_nan_gradient_with_a_finite_loss_is_skipped(tmp_path):
    trainer, _ = build(base_cfg(tmp_path, "rlvr", steps=2))
    before = snapshot(trainer.model)
    name, param = next((n, p) for n, p in trainer.model.named_parameters() if p.requires_grad)
    handle = param.register_hook(lambda g: g * float("nan"))  # the backward alone goes wrong
    metrics = trainer.update(rows_with_signal())
    handle.remove()
    assert metrics["train/skipped"] == 1.0
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad)
    fact = json.loads((Path(trainer.cfg.output_dir) / "nonfinite.jsonl").read_text().splitlines()[0])
    assert fact["where"] == "grad" and fact["nonfinite_grads"][0] == name and fact["chunk"] == 0


def test_consecutive_skips_stop_the_run_with_its_last_good_checkpoint(tmp_path, monkeypatch):
    # entropy_coeff > 0: every row carries a gradient, so no step's forward pass is skipped as
    # idle (a tied GRPO group with no other term has no gradient and is never run, NaN or not)
    cfg = base_cfg(tmp_path, "rlvr", steps=6, max_consecutive_skips=2, save_every=0, entropy_coeff=0.01)
    from erl.trainers.local import trainer as trainer_mod

    real_update = trainer_mod.LocalTrainer.update

    def update(self, samples, *advantages):  # the driver passes the step's advantages
        if self.step_count >= 1:  # from step 2 on, every loss is NaN
            h = poison_forward(self, set(range(1, 100)))
            try:
                return real_update(self, samples, *advantages)
            finally:
                h.remove()
        return real_update(self, samples, *advantages)

    monkeypatch.setattr(trainer_mod.LocalTrainer, "update", update)
    with pytest.raises(NonFiniteStepError, match=r"2 consecutive steps.*step_3"):
        train(cfg)
    out = Path(cfg["trainer"]["output_dir"])
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [r.get("train/skipped") for r in rows[1:]] == [0.0, 1.0, 1.0]
    assert (out / "checkpoints" / "step_3" / "model.safetensors").is_file()  # saved although save_every=0
    state = load_checkpoint(out / "checkpoints" / "step_3")["trainer_state"]
    assert state["skipped_steps"] == 2 and state["consecutive_skips"] == 2
    assert all(torch.isfinite(v).all() for v in load_checkpoint(out / "checkpoints" / "step_3")["model"].values())


def test_time_budget_stops_after_a_step_and_resume_continues(tmp_path, capsys):
    """The run stops after step 1 and says so (erl-train's last line had said "done"); resumed, it ends."""
    from erl.cli.train import _run

    cfg = base_cfg(tmp_path, "rlvr", steps=3, save_every=0, time_budget_s=1e-9)
    _run(OmegaConf.create(cfg))
    out = Path(cfg["trainer"]["output_dir"])
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1]
    assert (out / "checkpoints" / "step_1").is_dir()
    assert f"erl-train: stopped at step 1 of 3 (trainer.time_budget_s; resume=true goes on) -> {out}" in capsys.readouterr().out
    _run(OmegaConf.create({**cfg, "resume": True, "trainer": {**cfg["trainer"], "time_budget_s": 0}}))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2, 3]
    assert f"erl-train: done -> {out}" in capsys.readouterr().out



def test_training_forward_gives_sdpa_no_fully_masked_query_row(monkeypatch):
    """The cause of the bf16 NaN gradients on the GPU: left-padded rows whose pad queries attend
    to nothing. The training forward's rows are padded at the end, so SDPA gets no mask, only
    causality (every query sees itself), and the real tokens' log-probs are each row's alone
    (fp32, CPU)."""
    import torch.nn.functional as F

    from erl.models.tiny import build_tiny_model, build_tiny_tokenizer
    from erl.trainers.local.batch import pad_samples, response_logprobs

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden=32, layers=2, heads=2)
    rows = [TokenSample(list(range(5, 5 + p)), list(range(40, 40 + r)), [1] * r, [0.0] * r)
            for p, r in [(3, 6), (11, 2), (7, 4)]]
    batch = pad_samples(rows, 0)
    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        seen.append((attn_mask, is_causal))
        return real_sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model.set_attn_implementation("sdpa")
    logp = response_logprobs(model, batch)[0]
    assert seen == [(None, True)] * 2  # one call per layer
    # the same log-probs, one row at a time without any padding
    for i, r in enumerate(rows):
        alone = pad_samples([r], 0)
        n = len(r.response_ids)
        assert torch.allclose(logp[i, :n], response_logprobs(model, alone)[0][0, :n], atol=1e-5)
    # the eager kernel (its own causal mask) gives the same numbers
    model.set_attn_implementation("eager")
    assert torch.allclose(response_logprobs(model, batch)[0] * batch.response_mask, logp * batch.response_mask,
                          atol=1e-5)


def test_training_forward_refuses_a_model_that_rescales_its_logits():
    """The training forward runs the decoder and the LM head itself; a model whose own forward
    rescales the logits (Cohere's logit_scale) would get other log-probs than it samples from."""
    from erl.models.tiny import build_tiny_model, build_tiny_tokenizer
    from erl.trainers.local.batch import pad_samples, response_logprobs

    model = build_tiny_model(build_tiny_tokenizer(), hidden=32, layers=1, heads=2)
    batch = pad_samples([TokenSample([5, 6], [7, 8], [1, 1], [0.0, 0.0])], 0)
    response_logprobs(model, batch)
    model.config.logit_scale = 0.5
    with pytest.raises(ValueError, match="logit_scale"):
        response_logprobs(model, batch)
