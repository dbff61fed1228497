"""The ERL driver shared by both trainers: the same episodes give the same step metrics in the
local trainer (autograd on a tiny model) and the verl trainer (CPU stand-in workers), and the
metrics hold the values worked out by hand."""

import pytest
from test_local_trainer import base_cfg

from erl.core.metrics import advantage_mean_abs
from erl.core.stream import EVAL_SEED_OFFSET, step_seed
from erl.core.types import Episode, Step, TokenSample, Trajectory
from erl.trainers.local.run import build

SQRT_HALF = 0.5**0.5


def episodes() -> list[Episode]:
    """Task t1, two episodes. t1:0 failed attempt 1 (r1 = 0) in two turns that become one row
    with response mask [1, 1, 0, 0, 1] (3 trained tokens), reflected (2 tokens), succeeded on
    attempt 2 (r2 = 1, 1 token) and was distilled (1 token); its tool trajectory is not trained.
    t1:1 solved attempt 1 (r1 = 1, 1 token)."""
    a1 = Trajectory("attempt1", steps=[
        Step(prompt_ids=[10, 11], response_ids=[20, 21], logprobs=[-0.1, -0.2]),
        Step(prompt_ids=[10, 11, 20, 21, 30, 31], response_ids=[22], logprobs=[-0.3]),
    ], reward=0.0, info={"turns": 2})
    refl = Trajectory("reflection", steps=[Step(prompt_ids=[40], response_ids=[41, 42], logprobs=[-0.4, -0.5])],
                      reward=1.0)
    a2 = Trajectory("attempt2", steps=[Step(prompt_ids=[50, 51], response_ids=[23], logprobs=[-0.6])], reward=1.0,
                    info={"turns": 1})
    dist = Trajectory("distill", steps=[Step(prompt_ids=[10, 11], response_ids=[23], logprobs=[-0.6])], reward=1.0)
    tool = Trajectory("search_tool", steps=[Step(prompt_ids=[1], response_ids=[2], logprobs=[0.0])], reward=5.0)
    ep0 = Episode(id="t1:0", task={"task_id": "t1"}, trajectories=[a1, refl, a2, dist, tool], is_correct=True,
                  metrics={"r1": 0.0, "success1": 0.0, "r2": 1.0, "success2": 1.0, "attempt2": 1.0, "reflected": 1.0,
                           "reflection_parse_fail": 0.0, "memory_hits": 0.0, "memory_stored": 1.0, "distilled": 1.0})
    ok = Trajectory("attempt1", steps=[Step(prompt_ids=[10, 11], response_ids=[24], logprobs=[-0.7])], reward=1.0,
                    info={"turns": 1})
    ep1 = Episode(id="t1:1", task={"task_id": "t1"}, trajectories=[ok], is_correct=True,
                  metrics={"r1": 1.0, "success1": 1.0, "r2": 1.0, "success2": 0.0, "attempt2": 0.0, "reflected": 0.0,
                           "reflection_parse_fail": 0.0, "memory_hits": 0.0, "memory_stored": 0.0, "distilled": 0.0})
    return [ep0, ep1]


# By hand. Rows: t1 attempt1 x2 (r 0, 1), reflection (1), attempt2 (1), distill (1).
# GRPO per task and segment: attempt1 mean 0.5, std (Bessel) sqrt(0.5) -> -+0.5 / sqrt(0.5) = -+sqrt(0.5);
# reflection and attempt2 are groups of one: their raw reward 1; distill (sft): 0.
# Token-weighted |A|: (sqrt(.5) * 3 + 1 * 2 + 1 * 1 + 0 * 1 + sqrt(.5) * 1) / 8 trained tokens.
MEAN_ABS = (4 * SQRT_HALF + 3) / 8  # 0.7286; a per-row mean would give (2 sqrt(.5) + 2) / 5 = 0.6828
EXPECTED = {
    "episodes": 2.0, "attempt1/reward": 0.5, "attempt1/success": 0.5, "attempt2/reward": 1.0,
    "attempt2/success": 0.5, "attempt2/rate": 0.5, "reflection/rate": 0.5, "reflection/parse_fail_rate": 0.0,
    "reflection/reward": 1.0, "attempt2/gain": 1.0, "memory/stored": 1.0, "distill/episodes": 1.0,
    "episode/success": 1.0, "attempt/turns": 4 / 3, "rows": 5.0, "attempt1/rows": 2.0, "attempt1/tokens": 4.0,
    "reflection/rows": 1.0, "reflection/tokens": 2.0, "attempt2/rows": 1.0, "attempt2/tokens": 1.0,
    "distill/rows": 1.0, "distill/tokens": 1.0, "tokens/trained": 8.0, "tokens/total": 7 + 3 + 3 + 3 + 3,
    "advantage/mean_abs": MEAN_ABS, "tokens/generated": 0.0, "rollout/sequences": 0.0,
    "train/skipped_steps": 0.0,
}
# what each backend's own update reports (and only that differs between the two)
LOCAL_ONLY = ("loss/", "lr", "train/skipped", "train/idle", "train/micro_batches", "perf/", "rollout/logprob_gap",
              # the engine in this process counts these; verl's workers do not say
              "rollout/decode_steps", "rollout/prefill_forwards", "time/rollout_prefill", "time/rollout_decode",
              "time/rollout_gpu_wait")
VERL_ONLY = ("actor/", "time/old_log_prob", "time/ref_log_prob", "time/update_actor", "time/sync_weights")
UNTIMED = ("time/", "throughput/", "system/", "perf/gc_full")  # wall clock, process memory and its collector


def test_advantage_mean_abs_weighs_rows_by_their_trained_tokens():
    rows = [TokenSample(prompt_ids=[1], response_ids=[2, 3, 4], response_mask=[1, 0, 1], logprobs=[0.0] * 3),
            TokenSample(prompt_ids=[1], response_ids=[2], response_mask=[1], logprobs=[0.0])]
    assert advantage_mean_abs([-3.0, 1.5], rows) == pytest.approx((3.0 * 2 + 1.5 * 1) / 3)
    no_tokens = TokenSample(prompt_ids=[1], response_ids=[2], response_mask=[0], logprobs=[0.0])
    assert advantage_mean_abs([2.0], [no_tokens]) == 0.0
    with pytest.raises(ValueError, match="2 advantages for 1 rows"):
        advantage_mean_abs([1.0, 2.0], [no_tokens])


def test_step_seed_is_the_rule_both_trainers_sample_under():
    assert step_seed(0, 5) == 5 and step_seed(2, 5) == 2 * 1_000_003 + 5
    assert step_seed(1, EVAL_SEED_OFFSET + 3) == 1_000_003 + 10**6 + 3


def _step_on_fixed_episodes(trainer) -> dict:
    trainer.collect = lambda tasks: episodes()  # the same episodes whatever the policy samples
    return trainer.step()


def test_both_trainers_report_the_same_step_metrics_on_the_same_episodes(tmp_path):
    pytest.importorskip("verl")
    from test_verl_trainer import _trainer

    from erl.models.tiny import build_tiny_model, build_tiny_tokenizer

    folder = tmp_path / "tiny"
    tok = build_tiny_tokenizer()
    build_tiny_model(tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    local = build(base_cfg(tmp_path))[0]
    verl = _trainer(folder, tmp_path / "verl", ["trainer.val_before_train=false"])
    assert (local.erl.distill_mode, local.norm_adv_by_std) == (verl.erl.distill_mode, verl.norm_adv_by_std)
    m_local, m_verl = _step_on_fixed_episodes(local), _step_on_fixed_episodes(verl)

    for key, value in EXPECTED.items():
        assert m_local[key] == pytest.approx(value, abs=1e-6), key
        assert m_verl[key] == pytest.approx(value, abs=1e-6), key
    shared = set(m_local) & set(m_verl)
    assert shared >= set(EXPECTED) | {"time/rollout", "time/reflection", "time/update", "time/step",
                                      "rollout/batches", "throughput/gen_tokens_per_s",
                                      "throughput/update_tokens_per_s", "system/peak_rss_gb", "memory/size",
                                      "perf/gc_full_passes", "perf/gc_full_seconds"}
    for key in shared:
        if not key.startswith(UNTIMED):
            assert m_local[key] == m_verl[key], key
    # beyond the driver's metrics, each reports only its own update's
    assert all(k.startswith(LOCAL_ONLY) for k in set(m_local) - shared), set(m_local) - shared
    assert all(k.startswith(VERL_ONLY) for k in set(m_verl) - shared), set(m_verl) - shared
    assert "loss/pg_loss" in m_local and "actor/erl/pg_loss" in m_verl
    assert local.step_count == verl.step_count == 1 and local.cursor == verl.cursor == 2


def test_loss_units_weigh_micro_batches_as_both_trainers_accumulate():
    from erl.core.losses import loss_units

    # a micro-batch of rows with 3, 0 and 2 trained tokens: 5 tokens; 2 rows that train anything
    assert loss_units([3, 0, 2], "token-mean") == 5
    assert loss_units([3, 0, 2], "seq-mean-token-mean") == loss_units([3.0, 0.0, 2.0], "seq-mean-token-sum") == 2


@pytest.mark.parametrize("inside_a_loop", [False, True])
def test_a_phase_runs_its_episodes_inside_the_rollout_context(inside_a_loop):
    """The rollout context (the local trainer's bf16 autocast) holds where the episodes run. Inside
    a running event loop (verl's Ray async actor, a notebook) they run on a thread of their own, and
    autocast is per thread: entered only in the caller, a rollout copy with bf16 linears and fp32
    norms met fp32 inputs there."""
    import asyncio

    import torch

    from erl.trainers.driver import run_phase

    async def episodes():
        await asyncio.sleep(0)
        return [torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")]

    def phase():
        return run_phase(None, episodes(), torch.autocast("cpu", dtype=torch.bfloat16))

    async def actor_method():
        return phase()

    seen = asyncio.run(actor_method()) if inside_a_loop else phase()
    assert seen == [True, torch.bfloat16]
    assert not torch.is_autocast_enabled("cpu")
