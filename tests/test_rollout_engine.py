"""The rollout engine (erl.rollout.engine) on tiny random models, fp32 on CPU: its tokens and
log-probs against HF `generate` and a teacher-forced forward, slot refill, KV reuse, bad input."""

import asyncio
import contextlib
import logging

import pytest
import torch

from erl.core.interfaces import SamplingParams
from erl.models.chat import ChatTokenizer, chat_ids
from erl.models.tiny import build_tiny_tokenizer
from erl.rollout.build import build_policy
from erl.rollout.engine import RolloutEngine
from erl.rollout.hf_policy import HFPolicy
from erl.rollout.sampling import draw

TOK = build_tiny_tokenizer()


def model_of(kind="llama", seed=0, heads=4, head_dim=8):
    """2 layers, `heads` query heads sharing 2 KV heads (grouped-query attention, as SmolLM2)."""
    import transformers

    cls = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[kind]
    cfg = getattr(transformers, f"{cls}Config")(
        vocab_size=len(TOK), hidden_size=8 * heads, intermediate_size=64, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, head_dim=head_dim)
    torch.manual_seed(seed)
    return getattr(transformers, f"{cls}ForCausalLM")(cfg).eval()


def prompts(n):
    return [chat_ids(TOK, [{"role": "user", "content": "go " * (k % 7 + 1) + str(k)}]) for k in range(n)]


def forced_logprobs(model, prompt, gen, temperature):
    """The log-probs of `gen` under logits / temperature from one forward pass over prompt + gen."""
    ids = torch.tensor([prompt + gen.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids.to(model.device)).logits[0, len(prompt) - 1:-1].float().cpu()
        logits = logits / (temperature or 1.0)
    return torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt):, None]).squeeze(-1)


def logprob_errors(model, ps, gens, temperature):
    """|engine log-prob - teacher-forced log-prob| of every sampled token, one tensor."""
    return torch.cat([(forced_logprobs(model, p, g, temperature) - torch.tensor(g.logprobs)).abs()
                      for p, g in zip(ps, gens)])


@contextlib.contextmanager
def warnings_said(logger: str):
    """The messages of warnings `logger` says inside the block, read from a handler of its own:
    erl-train's console logging stops "erl" records short of the root logger (and of caplog)."""
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger(logger).addHandler(handler)
    try:
        yield said
    finally:
        logging.getLogger(logger).removeHandler(handler)


def assert_same_draws(got, want, tol: float = 1e-5) -> None:
    """The same tokens, and log-probs within `tol` (float32 rounding, where kernels differ)."""
    assert [g.token_ids for g in got] == [g.token_ids for g in want]
    for g, w in zip(got, want):
        assert g.logprobs == pytest.approx(w.logprobs, abs=tol)


def run_all(engine, ps, params_list):
    async def go():
        return await asyncio.gather(*[engine.generate(p, sp) for p, sp in zip(ps, params_list)])
    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_logprobs_equal_a_teacher_forced_forward(kind):
    model = model_of(kind)
    engine = RolloutEngine(model, TOK, slots=16, stop_ids=[])
    ps = prompts(12)
    # ragged lengths: the batch shrinks below 8 rows mid-way, so the gathered-rows path runs too
    params = [SamplingParams(max_new_tokens=3 + 2 * k, temperature=0.7, top_p=0.9) for k in range(12)]
    torch.manual_seed(1)
    gens = run_all(engine, ps, params)
    for p, g, sp in zip(ps, gens, params):
        assert len(g.token_ids) == sp.max_new_tokens and g.finish_reason == "length"
        assert torch.allclose(forced_logprobs(model, p, g, 0.7), torch.tensor(g.logprobs), atol=1e-4)


def test_greedy_tokens_equal_hf_generate():
    model = model_of()
    ps = prompts(5)
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    ours = RolloutEngine(model, TOK, slots=2).generate_batch(ps, params)
    theirs = HFPolicy(model, TOK).generate_batch(ps, params)
    for a, b, p in zip(ours, theirs, ps):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        # greedy: log-probs under the raw logits
        assert torch.allclose(forced_logprobs(model, p, a, 0.0), torch.tensor(a.logprobs), atol=1e-4)


def test_hf_policy_sampled_logprobs_match_a_teacher_forced_pass():
    """Log-probs are taken one generated position at a time (no batch x steps x vocab stack):
    each must equal the forward pass over prompt + completion under logits / temperature."""
    model = model_of()
    ps = prompts(6)
    torch.manual_seed(3)
    gens = HFPolicy(model, TOK, max_batch_size=4).generate_batch(ps, SamplingParams(max_new_tokens=9, temperature=0.7))
    assert sum(len(g.token_ids) for g in gens) > len(ps)  # more than one position each, on average
    for p, g in zip(ps, gens):
        assert len(g.logprobs) == len(g.token_ids)
        assert torch.allclose(forced_logprobs(model, p, g, 0.7), torch.tensor(g.logprobs), atol=1e-4)


def test_the_engine_switches_to_eval_mode_once_per_run_not_per_step(monkeypatch):
    """Module.train() walks every submodule: one switch per burst of requests, and the model is
    back in training mode afterwards (the trainer's update expects it)."""
    model = model_of()
    model.train()
    engine = RolloutEngine(model, TOK, slots=4)
    calls = []
    real = type(model).train

    def counted(self, mode=True):
        calls.append(mode)
        return real(self, mode)

    monkeypatch.setattr(type(model), "train", counted)
    run_all(engine, prompts(6), [SamplingParams(max_new_tokens=8, temperature=0.7)] * 6)
    assert engine.stats["decode_steps"] > 4
    assert calls == [False, True] and model.training
    calls.clear()
    engine.generate_batch(prompts(3), SamplingParams(max_new_tokens=5, temperature=0.0))
    assert calls == [False, True] and model.training


def test_hf_policy_out_of_gpu_memory_halves_the_batch_and_logs_it(monkeypatch):
    """A batch that does not fit (a shared GPU, a wave of long reflection prompts: two Sokoban
    seeds died so, docs/gpu/sokoban_seeds/crashed) is generated in halves instead, with the
    same greedy tokens; later batches start at the size that fitted; one prompt that does not
    fit alone is an error that says so; the model is back in training mode either way."""
    model = model_of()
    model.train()
    ps = prompts(5)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    alone = [HFPolicy(model, TOK).generate_batch([p], params)[0] for p in ps]
    real = model.generate
    sizes = []

    def tight(*args, **kwargs):  # "memory" for two rows at a time
        sizes.append(kwargs["input_ids"].shape[0])
        if sizes[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", tight)
    policy = HFPolicy(model, TOK, max_batch_size=64)
    with warnings_said("erl.rollout.hf_policy") as seen:
        got = policy.generate_batch(ps, params)
    assert [g.token_ids for g in got] == [g.token_ids for g in alone]
    assert sizes == [5, 3, 2, 1, 2] and policy.max_batch_size == 2 and model.training
    assert any("out of GPU memory generating 5 sequences; retrying in batches of 3" in m for m in seen)
    assert policy.stats["sequences"] == 5  # only what was generated counts

    def none_fits(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model, "generate", none_fits)
    with pytest.raises(torch.OutOfMemoryError, match="does not fit in GPU memory even alone"):
        policy.generate_batch(ps[:1], params)
    assert model.training


def test_a_finished_slot_is_refilled_while_others_decode():
    engine = RolloutEngine(model_of(), TOK, slots=2, stop_ids=[])
    lengths = [12, 2, 2, 2]
    gens = run_all(engine, prompts(4), [SamplingParams(max_new_tokens=n, temperature=1.0) for n in lengths])
    assert [len(g.token_ids) for g in gens] == lengths
    assert engine.n_slots == 2  # never more than 2 sequences at once
    # The long one takes 11 decode steps (its first token comes from the prefill); each short one
    # joins the free slot while it decodes (3 admissions), so no step is spent on anything else.
    assert engine.stats["decode_steps"] == 11 and engine.stats["batches"] == 3
    assert engine.stats["sequences"] == 4 and engine.stats["generated_tokens"] == 18


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("encode", [False, True])
def test_overlap_lets_episodes_run_while_a_step_decodes_and_their_next_turn_joins_one_step_later(overlap, encode):
    """A decodes 10 tokens alone; B takes two turns of 2, and reads the engine's step count when
    its second ends. Without overlap B's second turn is admitted at step 2 (its first ended at
    step 1), ends there, and B reads 2. With overlap B runs its host code while step 2 decodes,
    so its second turn joins at step 3, and B wakes while step 4 decodes: it reads 4. Tokens
    and log-probs stay exact either way, and the run is the same every time (no timing in it).
    `encode`: B's host code awaits a batched encoding of a new chat (ChatTokenizer.warm, three
    turns of the event loop) and still joins as soon."""
    model = model_of()
    a_prompt, b_prompt = prompts(2)

    def run():
        # the step counts below are of one step delivered before the next (pipelining adds spare
        # steps: tests/test_rollout_pipeline.py)
        engine = RolloutEngine(model, TOK, slots=2, stop_ids=[], overlap=overlap, pipeline=False)
        params = SamplingParams(max_new_tokens=2, temperature=1.0)
        chat = ChatTokenizer(TOK)

        async def b_episode():
            first = await engine.generate(b_prompt, params)
            if encode:
                assert await chat.prompt_ids_async([{"role": "user", "content": "a new chat"}])
            second_prompt = b_prompt + first.token_ids + prompts(3)[2]
            second = await engine.generate(second_prompt, params)
            return second_prompt, second, engine.stats["decode_steps"]

        async def go():
            a = engine.generate(a_prompt, SamplingParams(max_new_tokens=10, temperature=1.0))
            return await asyncio.gather(a, b_episode())

        torch.manual_seed(3)
        return engine, asyncio.run(go())

    engine, (a, (b2_prompt, b2, b2_step)) = run()
    assert b2_step == (4 if overlap else 2)
    assert engine.stats["decode_steps"] == 9 and engine.stats["batches"] == 2
    for prompt, gen in ((a_prompt, a), (b2_prompt, b2)):
        assert torch.allclose(forced_logprobs(model, prompt, gen, 1.0), torch.tensor(gen.logprobs), atol=1e-4)
    _, (a_again, (_, b2_again, _)) = run()
    assert (a_again.token_ids, b2_again.token_ids) == (a.token_ids, b2.token_ids)


def test_next_turn_prefills_only_its_new_tokens_and_matches_a_fresh_prefill():
    model = model_of()
    engine = RolloutEngine(model, TOK, slots=4, stop_ids=[])
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    first = prompts(1)[0]
    g1 = engine.generate_batch([first], greedy)[0]
    observation = chat_ids(TOK, [{"role": "user", "content": "ok"}])
    second = first + g1.token_ids + observation
    before = engine.stats["prefill_tokens"]
    g2 = engine.generate_batch([second], greedy)[0]
    # the slot holds the KV of `first` + all generated tokens but the last (never fed back)
    assert engine.stats["prefill_tokens"] - before == 1 + len(observation)
    assert engine.stats["reused_tokens"] == len(first) + len(g1.token_ids) - 1
    fresh = RolloutEngine(model, TOK, slots=4, stop_ids=[]).generate_batch([second], greedy)[0]
    assert g2.token_ids == fresh.token_ids
    assert torch.allclose(torch.tensor(g2.logprobs), torch.tensor(fresh.logprobs), atol=1e-5)
    # new weights: the held KV is stale, so the same prompt is prefilled in full
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    before = engine.stats["prefill_tokens"]
    engine.generate_batch([second], greedy)
    assert engine.stats["prefill_tokens"] - before == len(second)


def test_a_sequence_that_ends_on_its_first_token_keeps_its_prompts_kv_and_frees_its_slot():
    """A prefill's tokens reach the host with its step's decode (RolloutEngine.finish), which
    already ran a row for every admitted sequence: one that ends on its first token wastes that
    row (dropped, not delivered), holds its prompt's KV only, and its next turn prefills the
    rest exactly as a fresh engine would."""
    model = model_of()
    engine = RolloutEngine(model, TOK, slots=4, stop_ids=[])
    ps = prompts(3)
    params = [SamplingParams(max_new_tokens=n, temperature=1.0) for n in (1, 5, 1)]
    torch.manual_seed(0)
    gens = run_all(engine, ps, params)
    assert [len(g.token_ids) for g in gens] == [1, 5, 1]
    assert engine.stats["decode_steps"] == 4 and engine.stats["generated_tokens"] == 7
    for p, g in zip(ps, gens):
        assert torch.allclose(forced_logprobs(model, p, g, 1.0), torch.tensor(g.logprobs), atol=1e-4)
    held = sorted(engine.held)
    assert held == sorted([0, len(ps[0]), len(ps[1]) + 4, len(ps[2])])
    greedy = SamplingParams(max_new_tokens=4, temperature=0.0)
    second = ps[0] + gens[0].token_ids + chat_ids(TOK, [{"role": "user", "content": "ok"}])
    before = engine.stats["prefill_tokens"]
    again = engine.generate_batch([second], greedy)[0]
    assert engine.stats["prefill_tokens"] - before == len(second) - len(ps[0])
    fresh = RolloutEngine(model, TOK, slots=4, stop_ids=[]).generate_batch([second], greedy)[0]
    assert again.token_ids == fresh.token_ids
    assert torch.allclose(torch.tensor(again.logprobs), torch.tensor(fresh.logprobs), atol=1e-5)


def test_lora_adapters_are_used():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model_of(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B starts at zero (a no-op adapter): make it count
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    ps = prompts(3)
    torch.manual_seed(0)
    gens = RolloutEngine(model, TOK, slots=4, stop_ids=[]).generate_batch(
        ps, SamplingParams(max_new_tokens=8, temperature=1.0))
    for p, g in zip(ps, gens):
        assert torch.allclose(forced_logprobs(model, p, g, 1.0), torch.tensor(g.logprobs), atol=1e-4)


def lora_model(seed=0):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model_of(seed=seed), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                           layers_to_transform=[1]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()


def test_rollout_decodes_with_a_lora_merged_copy_that_follows_every_update():
    """build_policy folds the adapters into a plain copy (no LoRA ops per decode step); after an
    optimizer step on the trained model the engine's next admission re-merges them, so its
    log-probs are always the trained model's, and an unchanged model is not re-merged."""
    from erl.rollout.merged import MergedLoRA

    model = lora_model()
    engine = build_policy(model, TOK, "engine")
    assert isinstance(engine, RolloutEngine) and engine.model is not model
    assert not any("lora" in n for n, _ in engine.model.named_parameters())  # 3 adapted layers merged
    assert len(engine.refresh.__self__.pairs) == 3 and model.get_base_model().model.layers[1].mlp.down_proj.lora_A
    ps, params = prompts(3), SamplingParams(max_new_tokens=6, temperature=1.0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        torch.manual_seed(0)
        for p, g in zip(ps, engine.generate_batch(ps, params)):
            assert torch.allclose(forced_logprobs(model, p, g, 1.0), torch.tensor(g.logprobs), atol=1e-4)
        model.train()
        loss = model(input_ids=torch.tensor([ps[0]])).logits.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        model.eval()
    merged = MergedLoRA.of(model)
    assert merged.refresh() is False  # nothing changed since it was made
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_A" in n).add_(0.1)
    assert merged.refresh() is True and merged.refresh() is False
    ids = torch.tensor([ps[1]])
    with torch.no_grad():
        assert torch.allclose(merged.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_a_merged_copy_in_the_autocast_dtype_samples_the_same_tokens_and_logprobs():
    """Under bf16 autocast a merged copy whose linear weights are stored in bf16 (cast_linears,
    lm_head untied from the fp32 embedding) samples exactly what the fp32 copy samples, since
    autocast would cast each weight to the same bf16 values; it follows updates the same way,
    and outside autocast the engine refuses it by name."""
    model = lora_model()
    ps, params = prompts(4), SamplingParams(max_new_tokens=6, temperature=1.0)
    plain, lowered = build_policy(model, TOK, "engine"), build_policy(model, TOK, "engine", autocast_dtype=torch.bfloat16)
    base = lowered.model
    assert base.lm_head.weight.dtype == torch.bfloat16 and base.model.embed_tokens.weight.dtype == torch.float32
    assert base.model.layers[1].mlp.down_proj.weight.dtype == torch.bfloat16
    assert plain.model.lm_head.weight.dtype == torch.float32
    for update in range(2):
        runs = []
        for engine in (plain, lowered):
            torch.manual_seed(update)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                runs.append(engine.generate_batch(ps, params))
        for a, b in zip(*runs):
            assert a.token_ids == b.token_ids and a.logprobs == b.logprobs
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.3)
    with pytest.raises(RuntimeError, match="run it under torch.autocast"):
        lowered.generate_batch(ps[:1], params)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "lora"])
def test_the_slot_forward_saves_kernels_without_changing_a_bit(monkeypatch, kind):
    """Under autocast the slot forward casts each norm's output to bf16 once, where autocast casts it
    per projection (q, k, v; gate, up), and rotates q and k as one tensor with transformers' formula,
    where apply_rotary_pos_emb rotates them apart. Against those references: the same logits to the
    bit and 8 kernels a layer fewer (2 layers here), with bf16 linear weights (the merged copy), fp32
    ones and peft adapters alike."""
    import sys

    from torch.utils._python_dispatch import TorchDispatchMode

    from erl.rollout.kv import SlotModel
    from erl.rollout.merged import cast_linears

    views = {"view", "_unsafe_view", "t", "unsqueeze", "slice", "transpose", "expand", "select", "reshape",
             "alias", "as_strided", "detach", "split", "unbind", "squeeze"}

    class Kernels(TorchDispatchMode):  # ops that run a kernel (views do not)
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func.overloadpacket.__name__ not in views
            return func(*args, **(kwargs or {}))

    model = lora_model() if kind == "lora" else model_of(kind)
    if kind == "llama":
        cast_linears(model, torch.bfloat16)

    def run():
        net = SlotModel(model)
        net.allocate(3, 64, torch.bfloat16, torch.device("cpu"))
        ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0], [12, 13, 0, 0]])
        pos = torch.arange(4).expand(3, 4) + torch.tensor([[0], [2], [5]])
        kernels = Kernels()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), kernels:
            out = net.forward(ids, pos, torch.tensor([0, 1, 2]), pos, 64, torch.tensor([3, 2, 1]))
        return out, kernels.n

    def apart(self, q, k, cos, sin, dtype):  # the model's own apply_rotary_pos_emb, q and k apart
        apply = sys.modules[type(self.layers[0].self_attn).__module__].apply_rotary_pos_emb
        q, k = apply(q, k, cos.squeeze(2), sin.squeeze(2), unsqueeze_dim=2)
        return q.to(dtype), k.to(dtype)

    fused, fewer = run()
    monkeypatch.setattr(SlotModel, "compute_cast", staticmethod(lambda device_type: lambda x: x))
    monkeypatch.setattr(SlotModel, "rope", apart)
    reference, more = run()
    assert torch.equal(fused, reference)
    # peft casts the input of an adapter to its float32 weights first: layer 1's q and v adapters cast it back
    assert more - fewer == 8 * 2 - (2 if kind == "lora" else 0)


def test_no_merged_copy_when_other_weights_train_too():
    """A LoRA model whose embeddings also train (peft's modules_to_save, say) would need them
    synced as well: the engine then decodes with the model itself; a plain model likewise."""
    from erl.rollout.merged import MergedLoRA

    model = lora_model()
    assert build_policy(model, TOK, "engine", merge_lora=False).model is model  # trainer.rollout_merge_lora=false
    model.get_base_model().model.embed_tokens.weight.requires_grad_(True)
    assert MergedLoRA.of(model) is None and build_policy(model, TOK, "engine").model is model
    plain = model_of()
    assert MergedLoRA.of(plain) is None and build_policy(plain, TOK, "engine").model is plain


def test_stop_ids_end_a_sequence():
    model = model_of()
    p, params = prompts(1), SamplingParams(max_new_tokens=12, temperature=1.0)
    torch.manual_seed(3)
    free = RolloutEngine(model, TOK, stop_ids=[]).generate_batch(p, params)[0].token_ids
    k = next(i for i in range(1, len(free)) if free[i] not in free[:i])  # its first occurrence
    torch.manual_seed(3)  # the same draws: the same tokens up to the stop
    g = RolloutEngine(model, TOK, stop_ids=[free[k]]).generate_batch(p, params)[0]
    assert g.token_ids == free[:k + 1] and g.finish_reason == "stop"


def test_draw_takes_the_first_token_whose_cumulative_mass_reaches_u(monkeypatch):
    # u = (1 - r) * total mass; row 0's cumulative masses are 0, .25, .25, 1 and row 1's all 1
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75], [1.0, 0.0, 0.0, 0.0]])
    for r, row0 in ((1 - 2**-30, 1), (0.8, 1), (0.75, 1), (0.5, 3), (0.0, 3)):  # never a zero-mass token
        monkeypatch.setattr(torch, "rand", lambda *a, r=r, **k: torch.full(a[:2], r, dtype=k["dtype"]))
        assert draw(probs).tolist() == [row0, 0], r
    monkeypatch.undo()
    torch.manual_seed(0)
    drawn = draw(torch.tensor([[0.1, 0.2, 0.7]]).expand(40_000, 3))
    freq = torch.bincount(drawn, minlength=3).double() / 40_000
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.7], dtype=torch.double), atol=0.01)


def test_sample_per_row_temperature_top_p_and_greedy_rows(monkeypatch):
    """Rows of one step with their own settings: a greedy row takes the argmax, the others draw
    from their own logits / temperature (cut to top_p), log-probs under logits / temperature.
    u = 0.25 of the mass: over 4 logits with row 1 at temperature 1 its probabilities are
    0.1, 0.2, 0.3, 0.4 (cumulative 0.1, 0.3, ...: token 1); row 2 at top_p 0.5 keeps the two
    largest (0.3 and 0.4 -> 3/7, 4/7: 0.25 falls in token 2). A step whose rows all sample (the
    greedy branch skipped) draws what the mixed step drew for them."""
    from erl.rollout.sampling import sample

    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().repeat(3, 1)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.full(a[:2], 0.75, dtype=k["dtype"]))
    greedy = SamplingParams(temperature=0.0)
    hot, nucleus = SamplingParams(temperature=1.0), SamplingParams(temperature=1.0, top_p=0.5)
    tokens, logps = sample(logits, [greedy, hot, nucleus])
    assert tokens.tolist() == [3, 1, 2]
    assert logps.tolist() == pytest.approx(probs.log()[[3, 1, 2]].tolist(), abs=1e-6)
    same, same_logps = sample(logits[1:], [hot, nucleus])  # no greedy row
    assert same.tolist() == [1, 2] and same_logps.tolist() == pytest.approx(logps[1:].tolist(), abs=1e-6)
    cool = SamplingParams(temperature=0.5)  # probabilities squared and renormalised: 1/30, 4/30, 9/30, 16/30
    tokens, logps = sample(logits[:2], [cool, cool])
    assert tokens.tolist() == [2, 2]  # cumulative 1/30, 5/30, 14/30 >= 0.25
    assert logps.tolist() == pytest.approx([torch.tensor(9 / 30).log().item()] * 2, abs=1e-5)


def test_a_reset_engine_samples_what_a_new_engine_samples():
    model, params = model_of(), SamplingParams(max_new_tokens=6, temperature=1.0)
    used = RolloutEngine(model, TOK, slots=4, stop_ids=[])
    used.generate_batch(prompts(7)[4:], params)  # a history: slots grown, KV held, a slot clock
    used.reset()
    assert used.n_slots == 0 and used.net.capacity == 0
    torch.manual_seed(5)
    again = used.generate_batch(prompts(6)[::-1], params)
    torch.manual_seed(5)
    new = RolloutEngine(model, TOK, slots=4, stop_ids=[]).generate_batch(prompts(6)[::-1], params)
    assert [g.token_ids for g in again] == [g.token_ids for g in new]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attention,fused,regions", [("efficient", False, False), ("efficient", True, False),
                                                     ("flex", True, False), ("efficient", True, True),
                                                     ("flex", True, True)])
def test_a_reset_engine_on_cuda_samples_what_a_new_engine_samples_to_the_bit(attention, fused, regions):
    """As above with CUDA's kernels, graphs and bf16 (verl's hf workers: efficient decode and fused
    projections; preset=gpu: flex and compiled regions): the new engine samples first, then the used
    one runs a history of long prompts (its cache's tensors grow larger than the new engine's, and
    compiled code meets other shapes), resets, and must sample the same tokens with the same
    log-probs (docs/gpu/ratio_rise: resumed local and verl steps unlike the original run's)."""
    from erl.rollout.fused import fuse_projections

    def engine():
        model = model_of(head_dim=64).to("cuda", torch.bfloat16)
        if fused:
            fuse_projections(model)
        return RolloutEngine(model, TOK, slots=16, stop_ids=[], decode_attention=attention, regions=regions)

    params = SamplingParams(max_new_tokens=24, temperature=1.0)
    used, new = engine(), engine()  # built first: model_of seeds torch's generators
    torch.manual_seed(5)
    fresh = new.generate_batch(prompts(40), params)
    long = [chat_ids(TOK, [{"role": "user", "content": "go " * 150 + str(k)}]) for k in range(40)]
    torch.manual_seed(3)
    used.generate_batch(long, SamplingParams(max_new_tokens=48, temperature=1.0))
    used.reset()
    torch.manual_seed(5)
    again = used.generate_batch(prompts(40), params)
    assert [g.token_ids for g in again] == [g.token_ids for g in fresh]
    assert [g.logprobs for g in again] == [g.logprobs for g in fresh]


def test_bad_input_is_refused_clearly():
    engine = RolloutEngine(model_of(), TOK, max_len=64, stop_ids=[])
    with pytest.raises(ValueError, match="context limit of 64"):
        engine.generate_batch([[5] * 64], SamplingParams(max_new_tokens=4))
    with pytest.raises(ValueError, match="unsupported sampling params \\['min_p'\\]"):
        engine.generate_batch([[5] * 8], SamplingParams(extra={"min_p": 0.1}))
    with pytest.raises(ValueError, match="top_p"):
        engine.generate_batch([[5] * 8], SamplingParams(top_p=0.0))
    # a prompt that fits but leaves less room than max_new_tokens stops at the limit
    g = engine.generate_batch([[5] * 60], SamplingParams(max_new_tokens=10, temperature=0.0))[0]
    assert len(g.token_ids) == 4 and g.finish_reason == "length"


def test_build_policy_falls_back_for_other_architectures():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(TOK), n_embd=16, n_layer=1, n_head=2))
    assert isinstance(build_policy(gpt2, TOK, "auto"), HFPolicy)
    with pytest.raises(ValueError, match="architecture 'gpt2'"):
        build_policy(gpt2, TOK, "engine")
    assert isinstance(build_policy(model_of(), TOK, "auto"), RolloutEngine)  # auto on CPU: the engine
    assert isinstance(build_policy(model_of(), TOK, "engine"), RolloutEngine)
    assert isinstance(build_policy(model_of(), TOK, "hf"), HFPolicy)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_build_policy_auto_is_the_engine_on_cuda_too():
    assert isinstance(build_policy(model_of().cuda(), TOK, "auto"), RolloutEngine)  # docs/gpu/rollout_engine


def test_a_failing_forward_fails_every_waiting_request_and_the_engine_recovers():
    engine = RolloutEngine(model_of(), TOK, slots=2, stop_ids=[])
    real = engine.net.forward

    def broken(*args):
        raise RuntimeError("out of memory (simulated)")

    engine.net.forward = engine._decode = broken
    with pytest.raises(RuntimeError, match="simulated"):
        run_all(engine, prompts(3), [SamplingParams(max_new_tokens=4)] * 3)
    assert not engine.active and not engine.waiting
    engine.net.forward = engine._decode = real
    assert len(engine.generate_batch(prompts(3), SamplingParams(max_new_tokens=4))[2].token_ids) == 4


def test_engine_out_of_gpu_memory_names_what_to_lower():
    engine = RolloutEngine(model_of(), TOK, slots=2, stop_ids=[])

    def no_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    engine.net.forward = engine._decode = no_memory
    # 2 slots are halved to 1 first; one slot that does not fit is the error
    with pytest.raises(torch.OutOfMemoryError, match=r"KV cache of 1 slots .*trainer.gen_batch_size, now 1"):
        run_all(engine, prompts(3), [SamplingParams(max_new_tokens=4)] * 3)
    assert not engine.active and not engine.waiting  # every request failed, none left hanging


def two_rows_fit(engine) -> list[int]:
    """Make the engine's decode steps of more than two rows fail (out of memory) from its third
    step on; returns the rows of every step it tries."""
    real, rows = engine._decode, []

    def tight(ids, *args):
        rows.append(ids.shape[0])
        if ids.shape[0] > 2 and len(rows) >= 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(ids, *args)

    engine._decode = tight
    return rows


def test_engine_out_of_gpu_memory_halves_its_slots_and_restarts_what_was_in_flight():
    """As HFPolicy halves its batch: the slots are halved (8 -> 4 -> 2 here) and the sequences
    that were decoding start again from their prompts, so each result is one uninterrupted draw:
    the same greedy tokens and log-probs as an engine with memory to spare, logged."""
    model = model_of()
    ps = prompts(5)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    roomy = RolloutEngine(model, TOK, slots=8, stop_ids=[]).generate_batch(ps, params)
    engine = RolloutEngine(model, TOK, slots=8, stop_ids=[])
    rows = two_rows_fit(engine)
    with warnings_said("erl.rollout.engine") as seen:
        got = run_all(engine, ps, [params] * 5)
    assert [g.token_ids for g in got] == [g.token_ids for g in roomy]
    for g, r in zip(got, roomy):
        assert len(g.logprobs) == 6 and g.logprobs == pytest.approx(r.logprobs, abs=1e-5)
    assert rows[:4] == [8, 8, 8, 4] and set(rows[4:]) == {2} and engine.max_slots == 2
    said = "RolloutEngine: out of GPU memory with {} slots x 128 positions; continuing with {} slots, " \
        "the {} sequences in flight restart from their prompts"
    assert [m.split(" (")[0] for m in seen] == [said.format(8, 4, 5), said.format(4, 2, 4)]
    assert engine.stats["sequences"] == 5 and engine.stats["generated_tokens"] == 30  # discarded work not counted


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, "reduce-overhead"])
def test_bf16_on_cuda_matches_a_teacher_forced_forward(compile):
    model = model_of().to("cuda", torch.bfloat16)
    engine = RolloutEngine(model, TOK, slots=16, stop_ids=[], compile=compile)
    ps = prompts(12)
    gens = engine.generate_batch(ps, SamplingParams(max_new_tokens=20, temperature=0.7))
    err = logprob_errors(model, ps, gens, 0.7)
    # bf16 rounding differs between one-token decode steps and one full-sequence forward
    assert err.mean() < 1e-2 and err.max() < 5e-2


def test_compiled_decode_asks_inductor_for_eager_precision_casts(monkeypatch):
    """The compiled decode step keeps eager's bf16 rounding unless told not to (its log-probs must
    stay the trainer's), keeps the mode's own options (CUDA graphs for reduce-overhead), and a
    misspelt mode is refused by name before anything compiles."""
    from erl.rollout.compiling import compile_options

    assert compile_options("reduce-overhead", True) == {"triton.cudagraphs": True, "emulate_precision_casts": True}
    assert compile_options("reduce-overhead", False) == {"triton.cudagraphs": True}
    assert compile_options(True, True) == {"emulate_precision_casts": True}
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    RolloutEngine(model_of(), TOK, slots=2, compile="max-autotune-no-cudagraphs")
    assert seen == [{"options": {"max_autotune": True, "coordinate_descent_tuning": True,
                                 "emulate_precision_casts": True}}]
    with pytest.raises(ValueError, match="compile mode 'reduce_overhead' is not one of"):
        RolloutEngine(model_of(), TOK, slots=2, compile="reduce_overhead")


def test_trainer_config_passes_a_compile_mode_to_the_engine(monkeypatch):
    """trainer.rollout_compile takes a torch.compile mode as well as true/false (true alone is
    mode "default": no CUDA graphs), and the mode reaches the engine's compile options."""
    from erl.trainers.local.config import LocalTrainerConfig

    cfg = LocalTrainerConfig.from_dict({"rollout_compile": "reduce-overhead"})
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    build_policy(model_of(), TOK, "engine", compile=cfg.rollout_compile)
    assert seen == [{"options": {"triton.cudagraphs": True, "emulate_precision_casts": True}}]
    assert LocalTrainerConfig.from_dict({"rollout_compile": True}).rollout_compile is True


def test_sharing_plan_and_prefix_lengths_by_hand():
    """Who lends a prompt's KV: another slot's held tokens (never a slot admitted in the same
    round: its copy could overwrite them), or a first-wave sequence of this round when that
    saves MIN_SAME_ROUND (16) more tokens than the best other source."""
    import numpy as np

    from erl.rollout.prefix import PrefixScan, plan_sharing, prefix_lengths

    base = list(range(100, 130))  # 30 tokens
    tok = np.full((6, 40), -1, dtype=np.int64)
    held = [0] * 6
    tok[0, :10], held[0] = base[:10], 10  # a running sequence (not admitted now)
    tok[5, :30], held[5] = base, 30  # slot 5's old tokens: it is admitted now, so it lends nothing
    admitted = [(1, 0, base + [1]),          # A: 10 from slot 0
                (2, 0, base + [2]),          # B: 30 from A, after A's prefill (30 >= 10 + 16)
                (3, 0, base[:20] + [7] * 5),  # C: A would give 20 < 10 + 16: slot 0's 10
                (4, 0, base + [3]),          # D: 30 from A (B waits itself, so it lends nothing)
                (5, 0, [9] * 20)]            # E: nothing to share
    plan = plan_sharing(tok, held, admitted)
    assert plan.reuse == [10, 30, 10, 30, 0]
    assert plan.lender == [0, 1, 0, 1, -1]
    assert plan.second == [False, True, False, True, False]
    # a slot's own KV wins when nothing is longer, and the last prompt token is never lent
    plan = plan_sharing(tok, held, [(1, 12, base[:10] + [5] * 5), (2, 0, base[:10])])
    assert (plan.reuse, plan.lender, plan.second) == ([12, 9], [-1, 0], [False, False])

    # two tasks' samples that share a 20-token system prompt: each task's first sample leads
    # its group (it does not wait for the other task's to gain the 20), its twins take all of it
    sys_ = base[:20]
    p1, p2 = sys_ + [1] * 10, sys_ + [2] * 10
    plan = plan_sharing(np.full((4, 40), -1, dtype=np.int64), [0] * 4,
                        [(0, 0, p1), (1, 0, p2), (2, 0, p1), (3, 0, p2)])
    assert (plan.reuse, plan.lender, plan.second) == ([0, 0, 29, 29], [-1, -1, 0, 1], [False, False, True, True])

    # one scan over every slot (the engine's, shared with its slot choice) plans the same
    assert plan_sharing(tok, held, admitted, scan=PrefixScan(tok, held, np.arange(6))) == \
        plan_sharing(tok, held, admitted)
    # the second wave (B and D) saves 2 x (30 - 10) = 40 tokens: kept at min_wave 40; below it
    # there is no second wave, and B and D take slot 0's 10 tokens like A
    assert plan_sharing(tok, held, admitted, min_wave=40).second == [False, True, False, True, False]
    plan = plan_sharing(tok, held, admitted, min_wave=41)
    assert (plan.reuse, plan.lender, plan.second) == ([10, 10, 10, 10, 0], [0, 0, 0, 0, -1], [False] * 5)

    assert prefix_lengths(tok, [(base + [1])[:30]])[0].tolist() == [10, 0, 0, 0, 0, 30]
    assert prefix_lengths(tok, [(base + [1])[:30]], among=[5, 0])[0].tolist() == [30, 10]
    # against a plain column-by-column count, on rows that part at every length up to 300
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 5, 300).tolist()
    rows = np.tile(np.asarray(prompt), (64, 1))
    cut = rng.integers(0, 301, 64)
    for r, c in enumerate(cut):
        rows[r, c:] = -1
    for n in (0, 1, 31, 32, 100, 299):
        naive = [next((i for i in range(n) if rows[r, i] != prompt[i]), n) for r in range(64)]
        assert prefix_lengths(rows, [prompt[:n]])[0].tolist() == naive


def test_packed_prefill_inputs_by_hand():
    """Two rows end to end: slot 5 prefills 3 new tokens after 2 it holds, slot 1 prefills 2 from
    the start; 2 query heads a KV head, so 4 sequences (head j of every KV head, row i)."""
    from erl.rollout.layout import packed_prefill_inputs, prefill_chunks

    chunk = [(5, 2, [10, 11, 12, 13, 14]), (1, 0, [20, 21])]
    ids, pos, rows, write, keys, last, (cu_q, cu_k, lengths, longest) = packed_prefill_inputs(chunk, 4, 64, 2)
    assert ids.tolist() == [[12, 13, 14, 20, 21]] and pos.tolist() == [[2, 3, 4, 0, 1]]
    assert rows.tolist() == [5, 5, 5, 1, 1] and write.tolist() == [[2, 3, 3, 0, 1]]  # capacity 4: scratch column 3
    assert keys == 5 and last.tolist() == [2, 4] and longest == 3
    # sequence (j, i) starts at j x 5 + row i's offset (0, 3); keys at slot x 64, as long as the row's prompt
    assert cu_q.tolist() == [0, 3, 5, 8, 10] and cu_k.tolist() == [320, 64, 320, 64, 0]
    assert lengths.tolist() == [5, 2, 5, 2]
    # packed chunks count new tokens, not rows x the widest: 3 + 2 = 5 fit a budget of 5
    assert prefill_chunks(chunk, 5, packed=True) == [[chunk[1], chunk[0]]]
    assert prefill_chunks(chunk, 4, packed=True) == [[chunk[1]], [chunk[0]]]
    assert prefill_chunks(chunk, 5) == [[chunk[1]], [chunk[0]]]  # padded: 2 x 16 > 5


def test_packed_prefill_needs_cuda_and_the_position_major_cache():
    engine = RolloutEngine(model_of(), TOK, slots=4, stop_ids=[])
    assert not engine.packed_prefill
    with pytest.raises(ValueError, match="needs CUDA and varlen_decode"):
        engine.packed_prefill = True


def test_prefill_chunks_by_hand():
    """Admitted (slot, reused, prompt) items, shortest rest first, in chunks of at most `budget`
    padded tokens (rows x the chunk's longest rest, rounded up to 16)."""
    from erl.rollout.layout import prefill_chunks

    items = [(0, 0, [1] * 10), (1, 4, [1] * 24), (2, 0, [1] * 5), (3, 0, [1] * 40)]  # rests 10, 20, 5, 40
    # 5 and 10 pad to 16 (2 x 16 = 32); adding 20 would make 3 x 32 = 96 > 64; then 2 x 48 > 64
    assert [[s for s, _, _ in c] for c in prefill_chunks(items, 64)] == [[2, 0], [1], [3]]
    assert [[s for s, _, _ in c] for c in prefill_chunks(items, 192)] == [[2, 0, 1, 3]]
    assert [[s for s, _, _ in c] for c in prefill_chunks(items, 1)] == [[2], [0], [1], [3]]
    assert prefill_chunks([], 64) == []


def test_a_group_of_equal_prompts_prefills_once_and_keeps_exact_logprobs():
    """n samples of one prompt (ERL's group): one prefill, the others copy its KV and prefill
    only their last prompt token; every log-prob still equals a teacher-forced forward."""
    model = model_of()
    p = chat_ids(TOK, [{"role": "user", "content": "walk to the lake and back again, twice"}])
    q = prompts(2)
    params = SamplingParams(max_new_tokens=5, temperature=1.0)
    counts = {}
    # min_wave: a second wave that saves fewer tokens is not worth its forward (the GPU default)
    for lend, min_wave in ((True, 0), (False, 0), (True, 7 * (len(p) - 1) + 1)):
        engine = RolloutEngine(model, TOK, slots=16, stop_ids=[], lend=lend)
        engine.min_wave = min_wave
        torch.manual_seed(0)
        gens = engine.generate_batch([p] * 8 + q, params)
        counts[lend, min_wave > 0] = (engine.stats["prefill_tokens"], engine.stats["shared_tokens"],
                                      engine.stats["prefill_forwards"])
        for prompt, g in zip([p] * 8 + q, gens):
            assert torch.allclose(forced_logprobs(model, prompt, g, 1.0), torch.tensor(g.logprobs), atol=1e-4)
    alone = 8 * len(p) + len(q[0]) + len(q[1])
    forwards = counts[False, False][2]
    assert counts[False, False] == (alone, 0, forwards)
    assert counts[True, False] == (len(p) + 7 + len(q[0]) + len(q[1]), 7 * (len(p) - 1), forwards + 1)
    assert counts[True, True] == (alone, 0, forwards)


def test_a_running_sequence_lends_its_prompt_to_a_later_request():
    """A request that arrives while another decodes from the same prompt copies that slot's
    KV (the prompt, not the other's generated tokens) and prefills only its own tail."""
    model = model_of()
    engine = RolloutEngine(model, TOK, slots=8, stop_ids=[])
    p = chat_ids(TOK, [{"role": "user", "content": "walk to the lake and back again, twice"}])
    tail = chat_ids(TOK, [{"role": "user", "content": "ok"}])

    async def go():
        first = asyncio.ensure_future(engine.generate(p, SamplingParams(max_new_tokens=30, temperature=1.0)))
        for _ in range(20):  # the first one is admitted and decodes a few tokens
            await asyncio.sleep(0)
        assert engine.active and engine.stats["decode_steps"] > 0
        before = engine.stats["prefill_tokens"]
        later = await engine.generate(p + tail, SamplingParams(max_new_tokens=4, temperature=1.0))
        return await first, later, engine.stats["prefill_tokens"] - before

    torch.manual_seed(0)
    first, later, prefilled = asyncio.run(go())
    assert prefilled == len(tail) and engine.stats["shared_tokens"] == len(p)
    for prompt, g in ((p, first), (p + tail, later)):
        assert torch.allclose(forced_logprobs(model, prompt, g, 1.0), torch.tensor(g.logprobs), atol=1e-4)


def test_running_sequences_keep_their_kv_when_the_cache_grows():
    """Two sequences decode in an 8-slot cache; 18 more requests then grow it to 32 slots.
    The growth used to copy the old cache only when the slot count stayed the same, so the
    running sequences (and any sequence they lent a prefix to) attended zeros from then on."""
    model = model_of()
    engine = RolloutEngine(model, TOK, slots=32, stop_ids=[])
    ps = prompts(20)

    async def go():
        first = [asyncio.ensure_future(engine.generate(p, SamplingParams(max_new_tokens=30, temperature=1.0)))
                 for p in ps[:2]]
        for _ in range(20):
            await asyncio.sleep(0)
        assert engine.n_slots == 8 and engine.stats["decode_steps"] > 0
        later = await asyncio.gather(*[engine.generate(p, SamplingParams(max_new_tokens=4, temperature=1.0))
                                       for p in ps[2:]])
        assert engine.n_slots == 32
        return await asyncio.gather(*first) + later

    torch.manual_seed(0)
    for p, g in zip(ps, asyncio.run(go())):
        assert torch.allclose(forced_logprobs(model, p, g, 1.0), torch.tensor(g.logprobs), atol=1e-4)


def two_turns(engine, model_device="cpu", switch=None):
    """Sampled first turns of 6 prompts (equal pairs: lent KV), then second turns that extend
    them (KV kept in the slot); `switch` is called between the turns."""
    torch.manual_seed(3)
    params = SamplingParams(max_new_tokens=7, temperature=0.8)
    ps = prompts(3) * 2
    first = engine.generate_batch(ps, params)
    if switch is not None:
        switch(engine)
    observation = chat_ids(TOK, [{"role": "user", "content": "ok"}])
    nexts = [p + g.token_ids + observation for p, g in zip(ps, first)]
    return first + engine.generate_batch(nexts, params)


def test_a_position_major_cache_samples_what_the_head_major_one_does():
    """varlen_decode's cache layout ([slots, capacity, kv_heads, d] seen through a transposed view)
    and its decode rows (the active slots, never a span with idle ones), here on CPU where the
    attention itself stays dense: the same tokens and log-probs as the default engine, also
    when the layout changes between turns (the held KV moves to the new tensors)."""
    model = model_of()
    want = two_turns(RolloutEngine(model, TOK, slots=8, stop_ids=[]))
    engine = RolloutEngine(model, TOK, slots=8, stop_ids=[])
    engine.varlen_decode = True
    got = two_turns(engine)
    assert engine.net.k[0].transpose(1, 2).is_contiguous() and engine.span_ratio == 0
    switched = two_turns(RolloutEngine(model, TOK, slots=8, stop_ids=[]),
                         switch=lambda e: setattr(e, "varlen_decode", True))
    for other in (got, switched):
        assert [g.token_ids for g in other] == [g.token_ids for g in want]
        for g, w in zip(other, want):
            assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("graphs", [False, True])
def test_varlen_attention_on_cuda_matches_the_dense_rows(graphs):
    """The memory-efficient kernel's variable-length mode (each row its own keys) against the
    dense masked rows, fp32 on the GPU, eager and replayed as CUDA graphs: in decode steps, and
    in packed prefills (rows end to end, causal from the bottom right: the second turns prefill
    after the KV their slots hold, the equal prompts after the KV lent to them)."""
    model = model_of().to("cuda")
    dense = RolloutEngine(model, TOK, slots=8, stop_ids=[], cuda_graphs=graphs)
    dense.varlen_decode = False  # on by default on CUDA
    assert not dense.packed_prefill
    want = two_turns(dense)
    for packed in (False, True):
        engine = RolloutEngine(model, TOK, slots=8, stop_ids=[], cuda_graphs=graphs)
        assert engine.varlen_decode and engine.packed_prefill  # the defaults on CUDA
        engine.packed_prefill = packed
        got = two_turns(engine)
        assert engine.stats["prefill_padded_tokens"] == engine.stats["prefill_tokens"] or not packed
        assert_same_draws(got, want, 1e-4)
