"""Pipelined decoding (RolloutEngine(pipeline=True), the default with overlap on CUDA): a decode
step is queued before the step before it is delivered and takes its input tokens on the device.
A sequence that ended decodes one spare row, whose token must reach no one, least of all the
next sequence in its slot. Run on CPU (fp32), where the order of work is the same."""

import asyncio

import pytest
import torch
from test_rollout_engine import TOK, forced_logprobs, model_of, prompts, two_rows_fit

from erl.core.interfaces import SamplingParams
from erl.rollout.engine import RolloutEngine


def episodes(engine, firsts, params, turns=2):
    """Each prompt's episode: `turns` turns, each next prompt its history plus a short reply."""
    async def episode(prompt, sp):
        out = []
        for turn in range(turns):
            gen = await engine.generate(prompt, sp)
            out.append((prompt, gen))
            prompt = prompt + gen.token_ids + prompts(turn + 2)[turn + 1][-3:]
        return out

    async def go():
        return await asyncio.gather(*(episode(p, sp) for p, sp in zip(firsts, params)))

    return [pair for ep in asyncio.run(go()) for pair in ep]


@pytest.mark.parametrize("slots", [3, 16])
def test_pipelined_steps_keep_exact_logprobs_and_lengths(slots):
    """Ragged lengths (one token: the sequence ends on its prefill's token) over fewer slots than
    episodes, so slots are handed on while spare rows are in flight; multi-turn, so next turns
    reuse their slot's KV. Every token's log-prob equals a teacher-forced pass, every length is
    as asked, and the same seed gives the same run."""
    model = model_of()
    params = [SamplingParams(max_new_tokens=1 + (3 * k) % 7, temperature=0.8) for k in range(8)]

    def run():
        engine = RolloutEngine(model, TOK, slots=slots, stop_ids=[], overlap=True, pipeline=True)
        torch.manual_seed(5)
        return engine, episodes(engine, prompts(8), params)

    engine, pairs = run()
    assert len(pairs) == 16
    for (prompt, gen), sp in zip(pairs, [p for p in params for _ in range(2)]):
        assert len(gen.token_ids) == sp.max_new_tokens
        assert torch.allclose(forced_logprobs(model, prompt, gen, 0.8), torch.tensor(gen.logprobs), atol=1e-4)
    assert engine.stats["sequences"] == 16 and engine.stats["reused_tokens"] > 0
    assert not engine.active and not engine.waiting
    _, again = run()
    assert [g.token_ids for _, g in again] == [g.token_ids for _, g in pairs]


def test_greedy_runs_pipelined_or_not_give_the_same_tokens_and_stops():
    """Greedy with a stop token that the episodes do draw: a pipelined engine gives the tokens,
    finish reasons and next turns of one that delivers each step before the next."""
    model = model_of()
    firsts = prompts(6)
    probe = RolloutEngine(model, TOK, slots=8, stop_ids=[]).generate_batch(firsts, SamplingParams(
        max_new_tokens=12, temperature=0.0))
    stop = probe[0].token_ids[2]  # ends episode 0's first turn at its third token, others wherever it comes
    sp = [SamplingParams(max_new_tokens=12, temperature=0.0)] * 6
    runs = []
    for pipeline in (False, True):
        engine = RolloutEngine(model, TOK, slots=4, stop_ids=[stop], overlap=True, pipeline=pipeline)
        runs.append((engine.stats, episodes(engine, firsts, sp, turns=3)))
    (plain_stats, plain), (piped_stats, piped) = runs
    assert [(p, g.token_ids, g.finish_reason) for p, g in plain] == [(p, g.token_ids, g.finish_reason) for p, g in piped]
    assert plain[0][1].finish_reason == "stop" and len(plain[0][1].token_ids) <= 3
    for (prompt, a), (_, b) in zip(plain, piped):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
    # the pipelined engine decodes spare rows for sequences that ended a step before, never fewer steps
    assert piped_stats["decode_steps"] >= plain_stats["decode_steps"]


def test_a_spare_rows_token_never_reaches_the_next_sequence_in_its_slot():
    """One slot: A ends at its second token; the step queued before A's end was delivered holds
    A's spare row, and B takes the slot before that step is delivered. B gets only its own
    tokens: those of B run alone."""
    model = model_of()
    a_prompt, b_prompt = prompts(2)
    greedy = SamplingParams(max_new_tokens=2, temperature=0.0)
    alone = RolloutEngine(model, TOK, slots=1, stop_ids=[]).generate_batch([b_prompt], greedy)[0]
    engine = RolloutEngine(model, TOK, slots=1, stop_ids=[], overlap=True, pipeline=True)

    async def go():
        return await asyncio.gather(engine.generate(a_prompt, greedy), engine.generate(b_prompt, greedy))

    a, b = asyncio.run(go())
    assert len(a.token_ids) == 2 and b.token_ids == alone.token_ids
    assert torch.allclose(torch.tensor(b.logprobs), torch.tensor(alone.logprobs), atol=1e-5)
    # A: prefill + 1 decode step + 1 spare; B the same (its spare ends the run)
    assert engine.stats["decode_steps"] == 4


def test_out_of_memory_mid_pipeline_drops_the_step_in_flight():
    """The engine halves its slots on an out-of-memory step and restarts the sequences in flight
    from their prompts. Pipelined, the step queued before the failing one is still undelivered:
    its tokens reach no restarted sequence, so each result is the greedy draw of an engine with
    memory to spare."""
    model = model_of()
    ps = prompts(5)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    roomy = RolloutEngine(model, TOK, slots=8, stop_ids=[]).generate_batch(ps, params)
    engine = RolloutEngine(model, TOK, slots=8, stop_ids=[], overlap=True, pipeline=True)
    two_rows_fit(engine)

    async def go():
        return await asyncio.gather(*(engine.generate(p, params) for p in ps))

    got = asyncio.run(go())
    assert engine.max_slots == 2
    assert [g.token_ids for g in got] == [g.token_ids for g in roomy]
    for g, r in zip(got, roomy):
        assert len(g.logprobs) == 6 and g.logprobs == pytest.approx(r.logprobs, abs=1e-5)
