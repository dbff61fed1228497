"""The engine's CUDA graphs (erl.rollout.graphs): on a GPU they replay the eager decode step to the
bit; on CPU the same bookkeeping runs with a recording that re-runs the forward, so which shape
is recorded when, what a replay reads and when graphs are dropped is checked everywhere."""

import contextlib

import pytest
import torch
from test_rollout_engine import TOK, forced_logprobs, model_of, prompts, run_all

from erl.core.interfaces import SamplingParams
from erl.rollout import graphs
from erl.rollout.engine import RolloutEngine
from erl.rollout.graphs import DecodeGraphs


class FakeGraph:
    """Stands for torch.cuda.CUDAGraph: replay() re-runs the recorded call into the recorded output."""
    replays = 0

    def replay(self):
        FakeGraph.replays += 1
        self.out.copy_(self.fn())


def fake_graphs(monkeypatch, engine, fail=False):
    """Give a CPU engine DecodeGraphs whose recordings are FakeGraphs."""
    recording = {}

    def forward(*args):
        out = engine.net.forward(*args)
        graph = recording.get("graph")
        if graph is not None:  # inside the recording: what a replay will run, on the recorded inputs
            graph.fn, graph.out = (lambda: engine.net.forward(*args)), out
        return out

    @contextlib.contextmanager
    def record(graph, pool):
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        recording["graph"] = graph
        try:
            yield
        finally:
            recording.pop("graph")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(graphs, "capture", record)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
    engine.graphs = DecodeGraphs(forward)
    FakeGraph.replays = 0
    return engine


def sampled(engine, n=12, tokens=None):
    torch.manual_seed(3)
    params = SamplingParams(max_new_tokens=tokens or 24, temperature=0.8)
    return engine.generate_batch(prompts(n), params)


def test_replayed_decode_steps_sample_what_eager_steps_sample(monkeypatch):
    """A cache's first shape runs eagerly once (that step's result) and is recorded; every other
    step, a new shape's first too, replays a recording with its own inputs copied in. The tokens
    and log-probs are the eager engine's, and a cache that grows (new tensors) drops every graph
    recorded against the old one."""
    eager = sampled(RolloutEngine(model_of(), TOK, slots=16, stop_ids=[]))
    engine = fake_graphs(monkeypatch, RolloutEngine(model_of(), TOK, slots=16, stop_ids=[]))
    got = sampled(engine)
    assert [g.token_ids for g in got] == [g.token_ids for g in eager]
    assert [g.logprobs for g in got] == [g.logprobs for g in eager]
    st = engine.stats
    assert st["graphs_recorded"] == st["decode_shapes"] and FakeGraph.replays == st["decode_steps"] - 1
    assert engine.graphs.cache is engine.net.k[0]
    before = dict(engine.graphs.graphs)
    longer = engine.generate_batch([prompts(1)[0] * 8], SamplingParams(max_new_tokens=4, temperature=0))
    assert engine.net.capacity > 128 and len(longer[0].token_ids) == 4
    assert engine.graphs.cache is engine.net.k[0] and not set(before) & set(engine.graphs.graphs)
    # a new phase: no slots, but the cache's tensors and the graphs recorded against them stay, so
    # the same requests sample what a new eager engine samples and no shape is recorded again
    kept, cache = dict(engine.graphs.graphs), engine.net.k[0]
    engine.reset()
    assert engine.n_slots == 0 and engine.net.capacity == 0
    assert engine.graphs.graphs == kept and engine.graphs.cache is cache is engine.net.k[0]
    recorded, replays = engine.stats["graphs_recorded"], FakeGraph.replays
    again = engine.generate_batch([prompts(1)[0] * 8], SamplingParams(max_new_tokens=4, temperature=0))
    assert again[0].token_ids == longer[0].token_ids and again[0].logprobs == longer[0].logprobs
    assert engine.stats["graphs_recorded"] == recorded and FakeGraph.replays == replays + 3  # 4 tokens: 3 decode steps
    assert engine.graphs.cache is cache  # the longer prompt's capacity still fits: the same tensors


def test_a_setting_that_changes_the_forward_drops_its_graphs(monkeypatch):
    """varlen_decode, decode_attention, fused, regions: the graphs recorded of the old forward are
    dropped (a replay would run the old kernels), and `warm` follows what the forward compiles."""
    from erl.rollout.regions import EAGER_REGIONS

    engine = fake_graphs(monkeypatch, RolloutEngine(model_of(), TOK, slots=16, stop_ids=[]))
    engine.varlen_decode = True  # as on CUDA; flex decode needs it
    for setting, value, warm in (("fused", False, False), ("decode_attention", "flex", True),
                                 ("decode_attention", "efficient", False), ("varlen_decode", True, False)):
        sampled(engine, n=4, tokens=3)
        assert engine.graphs.graphs
        setattr(engine, setting, value)
        assert not engine.graphs.graphs and engine.graphs.warm is warm, setting
    engine.net.regions = EAGER_REGIONS  # what the regions setter installs compiled (CUDA only)
    engine.fused = True
    assert engine.graphs.warm is True


def test_warm_graphs_run_every_new_shape_eagerly_before_recording_it(monkeypatch):
    """A compiled forward compiles for a shape at its first call, which no capture may hold: warm
    graphs run each new shape's forward outside the recording (that step's result), then record
    it, and replay it from the next step on. The tokens and log-probs are still eager's."""
    def two_batches(engine):  # 12 rows, then 3: two shapes
        return sampled(engine) + sampled(engine, n=3, tokens=5)

    eager = two_batches(RolloutEngine(model_of(), TOK, slots=16, stop_ids=[]))
    engine = fake_graphs(monkeypatch, RolloutEngine(model_of(), TOK, slots=16, stop_ids=[]))
    calls = []
    forward = engine.graphs.forward
    engine.graphs.forward = lambda *args: calls.append(args[0].shape[0]) or forward(*args)
    engine.graphs.warm = True
    got = two_batches(engine)
    assert [g.token_ids for g in got] == [g.token_ids for g in eager]
    assert [g.logprobs for g in got] == [g.logprobs for g in eager]
    st = engine.stats
    shapes = st["decode_shapes"]
    assert shapes == 2 and st["graphs_recorded"] == shapes
    # each new shape: one eager run and one recording (a call each); each later step: a replay
    assert len(calls) == 2 * shapes and FakeGraph.replays == st["decode_steps"] - shapes


def test_a_weight_written_in_place_reaches_the_next_replay(monkeypatch):
    """Graphs read the weights where they live: after an in-place update (optimizer step, LoRA
    re-merge, weight sync) a replayed step agrees with a teacher-forced pass of the new weights."""
    model = model_of()
    engine = fake_graphs(monkeypatch, RolloutEngine(model, TOK, slots=16, stop_ids=[]))
    sampled(engine)
    recorded = engine.stats["graphs_recorded"]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    engine.forget()  # what the engine does itself when the weights' version moves
    gens = sampled(engine)
    assert engine.stats["graphs_recorded"] == recorded  # the same graphs, replayed
    for p, g in zip(prompts(12), gens):
        assert torch.allclose(forced_logprobs(model, p, g, 0.8), torch.tensor(g.logprobs), atol=1e-4)


def test_a_recording_that_fails_leaves_eager_decoding_and_says_so(monkeypatch):
    seen = []  # the module's logger (erl's loggers may not propagate to pytest's capture)
    monkeypatch.setattr(graphs.logger, "warning", lambda msg, *args: seen.append(msg % args))
    eager = sampled(RolloutEngine(model_of(), TOK, slots=16, stop_ids=[]))
    engine = fake_graphs(monkeypatch, RolloutEngine(model_of(), TOK, slots=16, stop_ids=[]), fail=True)
    got = sampled(engine)
    assert [g.token_ids for g in got] == [g.token_ids for g in eager] and not engine.graphs.enabled
    assert [m.split(" (")[0] for m in seen] == ["RolloutEngine: CUDA graph recording failed"]
    assert engine.stats["graphs_recorded"] == 0 and FakeGraph.replays == 0


def test_graphs_are_cuda_only_and_the_trainer_flag_is_checked():
    from erl.core.config import ConfigError
    from erl.trainers.local.config import LocalTrainerConfig

    assert RolloutEngine(model_of(), TOK, slots=2).graphs is None  # a CPU model
    with pytest.raises(ConfigError, match="trainer.rollout_cuda_graphs must be true or false"):
        LocalTrainerConfig.from_dict({"rollout_cuda_graphs": "yes"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_graphs_replay_eager_decoding_to_the_bit(autocast):
    """Real CUDA graphs, bf16 weights or fp32 weights under bf16 autocast (the local trainer's
    GPU setting, whose weight-cast cache must not leak into a recording), across an in-place update.
    Autocast is entered per rollout phase, as the trainer does: its cast cache lives as long as
    the region (eager decoding inside one region spanning an update would use stale casts)."""
    def run(graphs):
        model = model_of().to("cuda", torch.float32 if autocast else torch.bfloat16)
        for p in model.parameters():
            p.requires_grad_(autocast)
        engine = RolloutEngine(model, TOK, slots=16, stop_ids=[], cuda_graphs=graphs)
        out = []
        for phase in range(2):
            if phase:
                with torch.no_grad():
                    for p in model.parameters():
                        p.mul_(1.5)
            with torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                out += sampled(engine)
        return out, engine.stats
    eager, _ = run(False)
    graphs, stats = run(True)
    assert stats["graphs_recorded"] > 0 and stats["decode_steps"] > 2 * stats["graphs_recorded"]
    assert [g.token_ids for g in graphs] == [g.token_ids for g in eager]
    assert max(abs(a - b) for g, e in zip(graphs, eager) for a, b in zip(g.logprobs, e.logprobs)) < 1e-6


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_admissions_wait_for_a_batch_as_large_as_admit_ratio_times_the_decoding_rows(ratio):
    """Ten sequences decode; eight requests arrive. At ratio 0 (CPU's default) eight are enough;
    at ratio 1 (CUDA's: a forward there costs about the same for 8 rows as for 800) they wait for
    ten, or until the oldest has waited admit_wait decode steps."""
    engine = RolloutEngine(model_of(), TOK, slots=32, stop_ids=[])
    engine.admit_ratio = ratio
    long = SamplingParams(max_new_tokens=40, temperature=0)
    engine.waiting.extend(engine._request(p, long) for p in prompts(10))
    engine.step()
    assert len(engine.active) == 10
    engine.waiting.extend(engine._request(p, long) for p in prompts(18)[10:])
    engine.step()
    assert (len(engine.active), len(engine.waiting)) == ((18, 0) if ratio == 0 else (10, 8))
    for _ in range(7):
        engine.step()
    assert len(engine.waiting) == (0 if ratio == 0 else 8)  # the oldest has waited 8 steps now
    engine.step()
    assert (len(engine.active), len(engine.waiting)) == (18, 0)


@pytest.mark.parametrize("span_ratio", [1, 2])
def test_decoding_a_span_of_slots_in_place_keeps_exact_logprobs(span_ratio):
    """A decode step runs either the first `span` slots in place (a view of the cache; idle slots
    among them write only the scratch column) or the active slots gathered. Ragged lengths make
    the active slots sparse, so both paths run; every log-prob still equals a teacher-forced pass."""
    from erl.rollout.layout import row_bucket

    model = model_of()
    engine = RolloutEngine(model, TOK, slots=32, stop_ids=[])
    engine.span_ratio = span_ratio
    seen = []  # (rows in the forward, in place?, rows a gather would take)
    forward = engine.net.forward
    engine._decode = lambda ids, pos, rows, *rest: seen.append(
        (ids.shape[0], rows is None, row_bucket(len(engine.active), 32))) or forward(ids, pos, rows, *rest)
    ps = prompts(24)
    params = [SamplingParams(max_new_tokens=2 + (5 * k) % 13 + (k == 23) * 8, temperature=0.7) for k in range(24)]
    torch.manual_seed(1)
    gens = run_all(engine, ps, params)
    for p, g in zip(ps, gens):
        assert torch.allclose(forced_logprobs(model, p, g, 0.7), torch.tensor(g.logprobs), atol=1e-4)
    assert {view for _, view, _ in seen} == {True, False}
    wider = [n > least for n, view, least in seen if view]  # a span wider than a gather's rows
    assert any(wider) == (span_ratio == 2) and all(n <= span_ratio * least for n, _, least in seen)


def test_out_of_memory_while_recording_is_the_engines_to_handle(monkeypatch):
    """Running out of GPU memory while recording is not an unrecordable op: graphs stay on and the
    engine's own remedy runs (half the slots, a new cache; the sequences in flight start over)."""
    engine = fake_graphs(monkeypatch, RolloutEngine(model_of(), TOK, slots=16, stop_ids=[]))
    real = graphs.capture  # the fake's
    failures = iter([True])

    @contextlib.contextmanager
    def record(graph, pool):
        if next(failures, False):
            raise torch.OutOfMemoryError("CUDA out of memory while recording")
        with real(graph, pool):
            yield

    monkeypatch.setattr(graphs, "capture", record)
    gens = sampled(engine)
    assert engine.graphs.enabled and engine.max_slots == 8 and engine.stats["graphs_recorded"] > 0
    assert len(gens) == 12 and all(len(g.token_ids) == 24 for g in gens)


def test_engine_and_trainer_forwards_run_attention_without_cudnn(monkeypatch):
    """cuDNN's attention planned every new prefill / micro-batch shape on the host (1.85 ms a
    call on an H200): the engine's forward and the trainer's log-prob forward switch it off
    around attention, and only there."""
    import torch.nn.functional as F

    from erl.core.types import TokenSample
    from erl.trainers.local.batch import pad_samples, response_logprobs

    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = model_of()
    RolloutEngine(model, TOK, slots=4, stop_ids=[]).generate_batch(prompts(2), SamplingParams(max_new_tokens=3))
    n_engine = len(seen)
    row = TokenSample(prompt_ids=[5, 6, 7], response_ids=[8, 9], response_mask=[1, 1], logprobs=[0.0, 0.0])
    response_logprobs(model, pad_samples([row], 0))
    assert n_engine > 0 and len(seen) > n_engine and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored outside


def test_host_values_reach_the_device_with_their_dtype():
    from erl.rollout.device import to_device

    assert to_device([1, 2], "cpu").dtype == torch.long
    t = to_device([0.5, 1.0], torch.device("cpu"), torch.bfloat16)
    assert t.dtype == torch.bfloat16 and t.tolist() == [0.5, 1.0]
    assert to_device(torch.tensor([3, 4], dtype=torch.int32), "cpu").tolist() == [3, 4]
    if torch.cuda.is_available():  # through pinned memory, without a wait: the values still arrive
        assert to_device(list(range(1000)), "cuda").sum().item() == 499500


def test_a_training_step_reports_the_cuda_graphs_its_engine_recorded(monkeypatch, tmp_path):
    """`rollout/graphs_recorded`: new decode graphs of the step's collect, for an engine with graphs
    (faked on CPU), so a run shows when its shapes stop being new; absent for one without."""
    from test_local_trainer import base_cfg

    from erl.trainers.local.run import build

    trainer, _ = build(base_cfg(tmp_path, eval_every=0))  # no eval inside a step: only the collect records
    assert "rollout/graphs_recorded" not in trainer.step()  # a CPU engine: no graphs
    engine = fake_graphs(monkeypatch, trainer.policy)
    counts = []
    for _ in range(2):
        before = engine.stats["graphs_recorded"]
        metrics = trainer.step()
        counts.append(metrics["rollout/graphs_recorded"])
        assert counts[-1] == engine.stats["graphs_recorded"] - before
    assert counts[0] > 0


def test_decode_rows_with_every_slot_active_need_no_idle_slot_to_pad_with():
    """varlen_decode asks for gathered rows always (span_ratio 0); once every slot decodes there
    is no idle slot to pad with and nothing to gather (the GPU workload's StopIteration)."""
    from erl.rollout.layout import decode_rows

    assert decode_rows(list(range(8)), 8, 0) == (list(range(8)), True)
    assert decode_rows(list(range(16)), 16, 0) == (list(range(16)), True)
    # a gap: the active slots first, padded to the bucket (8) with the first idle slot, 3
    assert decode_rows([0, 1, 2, 4], 8, 0) == ([0, 1, 2, 4, 3, 3, 3, 3], False)
    assert decode_rows([0, 1, 2, 4], 8, 1) == (list(range(8)), True)  # span 8 <= 1 x bucket 8
    assert decode_rows([0, 1, 2, 9], 16, 1) == ([0, 1, 2, 9, 3, 3, 3, 3], False)  # span 16 > 8
    assert decode_rows([0, 1, 2, 9], 16, 2) == (list(range(16)), True)


def test_a_training_step_reports_its_decode_steps(monkeypatch, tmp_path):
    """`rollout/decode_steps`: the engine's decode steps in the step's collect (its counter's move).
    A sequence of L tokens needs L - 1 of them after the prefill that samples its first, and each
    samples at least one token, so they lie between the longest sequence's L - 1 and the tokens
    generated. HFPolicy counts none: absent."""
    from test_local_trainer import base_cfg

    from erl.trainers.local.run import build

    trainer, _ = build(base_cfg(tmp_path, eval_every=0))
    lengths = []
    generate = trainer.policy.generate

    async def counted(prompt, params):
        gen = await generate(prompt, params)
        lengths.append(len(gen.token_ids))
        return gen

    monkeypatch.setattr(trainer.policy, "generate", counted)
    before = trainer.policy.stats["decode_steps"]
    metrics = trainer.step()
    steps = metrics["rollout/decode_steps"]
    assert steps == trainer.policy.stats["decode_steps"] - before
    assert max(lengths) - 1 <= steps <= metrics["tokens/generated"] == sum(lengths)
    hf, _ = build(base_cfg(tmp_path / "hf", eval_every=0, rollout_engine="hf"))
    assert "rollout/decode_steps" not in hf.step()
