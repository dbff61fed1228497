"""The engine's compiled regions around attention (erl.rollout.regions): the same formulas as the
eager forward (checked eagerly on CPU, where the engine refuses to compile them), which layers
they take, the settings that refuse them, and on CUDA the compiled regions against a
teacher-forced forward."""

import copy

import pytest
import torch
from test_rollout_engine import TOK, assert_same_draws, logprob_errors, lora_model, model_of, prompts, warnings_said

from erl.core.interfaces import SamplingParams
from erl.rollout.engine import RolloutEngine
from erl.rollout.fused import fuse_projections
from erl.rollout.regions import attention_inputs, layer_weights, mlp_block


def counted(calls: list):
    """The two regions run eagerly, each call counted."""
    def attn(*a):
        calls.append("attn")
        return attention_inputs(*a)

    def mlp(*a):
        calls.append("mlp")
        return mlp_block(*a)
    return attn, mlp


@pytest.mark.parametrize("kind", ["llama", "qwen2"])  # qwen2: q/k/v biases
def test_regions_compute_what_the_eager_forward_computes(kind):
    """Eagerly on CPU in float32: the same tokens, log-probs within 1e-5 (F.rms_norm against the
    RMSNorm module sums in another order), prefills and decode steps alike."""
    model = model_of(kind)
    fuse_projections(model)
    ps, params = prompts(6), SamplingParams(max_new_tokens=8, temperature=1.0)
    torch.manual_seed(0)
    want = RolloutEngine(model, TOK, slots=4, stop_ids=[]).generate_batch(ps, params)
    engine = RolloutEngine(model, TOK, slots=4, stop_ids=[])
    calls: list = []
    engine.net.regions = counted(calls)
    torch.manual_seed(0)
    got = engine.generate_batch(ps, params)
    assert_same_draws(got, want)
    forwards = engine.stats["decode_steps"] + engine.stats["prefill_forwards"]
    assert calls.count("attn") == calls.count("mlp") == 2 * forwards  # both layers of every forward


def test_regions_take_only_the_layers_they_compute():
    """Fused projections, float32 RMSNorms, plain o/down projections, SiLU, no q/k norms: else the
    layer runs eagerly (and the engine still samples what it would without regions)."""
    model = model_of()
    assert layer_weights(model.model.layers[0]) is None  # not fused
    fuse_projections(model)
    w = layer_weights(model.model.layers[0])
    assert w is not None and w.qkv_sizes == (32, 16, 16) and w.gate_up_sizes == (64, 64)
    assert w.qkv.data_ptr() == model.model.layers[0].self_attn.q_proj.weight.data_ptr()  # the modules' own
    qwen3 = model_of("qwen3")
    fuse_projections(qwen3)
    assert layer_weights(qwen3.model.layers[0]) is None  # q/k norms
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert layer_weights(half.model.layers[0]) is None  # a bf16 RMSNorm rounds where F.rms_norm would not
    adapted = lora_model()  # LoRA on layer 1's q, v and down projections: down_proj is an adapter
    fuse_projections(adapted.get_base_model())
    layers = adapted.get_base_model().model.layers
    assert layer_weights(layers[0]) is not None and layer_weights(layers[1]) is None
    ps, params = prompts(4), SamplingParams(max_new_tokens=6, temperature=0.0)
    want = RolloutEngine(adapted, TOK, slots=4, stop_ids=[]).generate_batch(ps, params)
    engine = RolloutEngine(adapted, TOK, slots=4, stop_ids=[])
    calls: list = []
    engine.net.regions = counted(calls)
    got = engine.generate_batch(ps, params)
    assert [g.token_ids for g in got] == [g.token_ids for g in want]
    assert calls.count("attn") == engine.stats["decode_steps"] + engine.stats["prefill_forwards"]  # layer 0 only


def test_regions_that_fail_to_compile_run_eagerly_after_a_warning(monkeypatch):
    """A compiler failure (no C compiler for Triton, say) in either region, at any layer: said once,
    then the same formulas run eagerly, the forward again from its input; the samples are what
    the eager forward draws. A failure of the eager regions themselves is raised."""
    from erl.rollout.regions import EAGER_REGIONS

    model = model_of()
    fuse_projections(model)
    ps, params = prompts(5), SamplingParams(max_new_tokens=6, temperature=1.0)
    torch.manual_seed(0)
    want = RolloutEngine(model, TOK, slots=4, stop_ids=[]).generate_batch(ps, params)
    calls = []

    def broken_mlp(*a):  # fails after the layer's attention has written the cache
        calls.append(1)
        raise RuntimeError("InductorError: failed to find a working C compiler")

    engine = RolloutEngine(model, TOK, slots=4, stop_ids=[])
    engine.net.regions = (attention_inputs, broken_mlp)
    torch.manual_seed(0)
    with warnings_said("erl.rollout.kv") as seen:
        got = engine.generate_batch(ps, params)
    assert_same_draws(got, want)
    assert len(calls) == 1 and engine.net.regions == EAGER_REGIONS
    assert sum("compiled regions failed (RuntimeError: InductorError" in m for m in seen) == 1

    def broken(*a):
        raise ValueError("a shape the formulas do not take")
    engine.net.regions = (broken, mlp_block)
    monkeypatch.setattr("erl.rollout.kv.EAGER_REGIONS", engine.net.regions)  # the eager ones fail: raised
    with pytest.raises(ValueError, match="a shape the formulas do not take"):
        engine.generate_batch(ps, params)


def recorded_regions(graphs: list, first_shapes: bool):
    """The two regions under torch.compile with a backend that records each graph it is given (its
    inputs' sizes; a dynamic size as its hint) and runs it as traced: dynamo's choices, on CPU."""
    from erl.rollout.compiling import FirstShapes

    def backend(gm, inputs):
        sizes = [tuple(x.shape) if isinstance(x, torch.Tensor) else ("dynamic", x.node.hint) for x in inputs]
        graphs.append((gm.code.count("\n"), str(sizes)))
        return gm.forward

    wrap = FirstShapes if first_shapes else (lambda f: f)
    return wrap(torch.compile(attention_inputs, backend=backend)), wrap(torch.compile(mlp_block, backend=backend))


def test_compiled_regions_build_the_same_graphs_whatever_shapes_a_process_meets_first():
    """A resumed run starts a new process at a later step, whose first decode and prefill have
    other sizes than the original process's first ones. With FirstShapes every process compiles
    each kind of call (decode rows, packed prefill tokens) from the same zeros first: the same
    graphs from the same sizes in either order, and the same samples as the eager forward. Plain
    torch.compile builds a static graph of whatever came first (the test's control)."""
    model = model_of()
    fuse_projections(model)
    few, many = prompts(2), prompts(7)
    params = SamplingParams(max_new_tokens=5, temperature=1.0)

    def run(first_shapes: bool, order: list) -> list:
        torch._dynamo.reset()
        graphs: list = []
        engine = RolloutEngine(model, TOK, slots=8, stop_ids=[])
        engine.net.regions = recorded_regions(graphs, first_shapes)
        for ps in order:
            torch.manual_seed(len(ps))
            got = engine.generate_batch(ps, params)
            torch.manual_seed(len(ps))
            assert_same_draws(got, RolloutEngine(model, TOK, slots=8, stop_ids=[]).generate_batch(ps, params))
        return sorted(graphs)

    try:
        assert run(True, [few, many]) == run(True, [many, few])
        assert run(False, [few, many]) != run(False, [many, few])
    finally:
        torch._dynamo.reset()


def test_first_shapes_runs_each_kind_of_call_first_on_fixed_size_zeros():
    """What FirstShapes hands the function before a call of a new kind: zeros whose leading sizes
    above 1 are the fixed ones (512 rows, 4,096 tokens; 8 x 256 when both exceed 1), other sizes,
    dtype and layout as the call's; then the call itself. Other sizes of a known kind go straight
    through; a new dtype, grad mode or weights' shape is a new kind."""
    from erl.rollout.compiling import FirstShapes
    from erl.rollout.regions import LayerWeights

    seen: list = []

    def fn(h, w, scale):
        seen.append((tuple(h.shape), h.dtype, bool(h.abs().sum() == 0), h.is_contiguous(), w.eps, scale))
        return h * scale

    def weights(hidden):
        t = torch.ones(hidden)
        return LayerWeights(t, t, None, (), t, None, t, t, None, (), t, None, 1e-5)

    f, w = FirstShapes(fn), weights(4)
    x = torch.randn(3, 1, 4)
    assert torch.equal(f(x, w, 2.0), 2 * x)
    assert seen == [((512, 1, 4), torch.float32, True, True, 1e-5, 2.0), ((3, 1, 4), torch.float32, False, True, 1e-5, 2.0)]
    f(torch.randn(7, 1, 4), w, 2.0)  # the same kind: no zeros
    assert len(seen) == 3
    f(torch.randn(1, 9, 4), w, 2.0)  # a packed prefill
    f(torch.randn(2, 5, 4), w, 2.0)  # rows and tokens
    f(torch.randn(1, 1, 4), w, 2.0)  # one token of one row: its zeros are its own sizes
    assert [s[0] for s in seen[3:]] == [(1, 4096, 4), (1, 9, 4), (8, 256, 4), (2, 5, 4), (1, 1, 4), (1, 1, 4)]
    del seen[:]
    f(torch.randn(4, 1, 4, dtype=torch.float64), w, 2.0)  # another dtype
    with torch.no_grad():
        f(torch.randn(4, 1, 4), w, 2.0)  # another grad mode
    f(torch.randn(4, 1, 4), weights(4), 2.0)  # other weights of the same shapes: the same kind
    f(torch.randn(4, 1, 5), weights(5), 2.0)  # other shapes
    f(torch.randn(6, 4).t().unsqueeze(1), w, 2.0)  # another layout (rows innermost): zeros laid out alike
    assert [(s[0], s[2]) for s in seen] == [((512, 1, 4), True), ((4, 1, 4), False)] * 2 + [((4, 1, 4), False)] + [
        ((512, 1, 5), True), ((4, 1, 5), False), ((512, 1, 6), True), ((4, 1, 6), False)]
    assert seen[-2][3] is False  # the zeros keep the call's layout


def test_regions_are_refused_where_they_cannot_run():
    from erl.core.config import ConfigError
    from erl.trainers.local.config import LocalTrainerConfig

    with pytest.raises(ValueError, match="RolloutEngine.regions needs CUDA"):
        RolloutEngine(model_of(), TOK, slots=2, regions=True)
    with pytest.raises(ValueError, match="not for a compiled engine"):
        RolloutEngine(model_of(), TOK, slots=2, compile=True, regions=True)
    engine = RolloutEngine(model_of(), TOK, slots=2)
    assert engine.regions is False
    with pytest.raises(ConfigError, match="trainer.rollout_regions must be true or false"):
        LocalTrainerConfig.from_dict({"rollout_regions": "yes"})
    with pytest.raises(ConfigError, match="not with rollout_engine=hf or rollout_compile"):
        LocalTrainerConfig.from_dict({"rollout_regions": True, "rollout_compile": True})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("flex", [False, True])
def test_compiled_regions_on_cuda_match_a_teacher_forced_forward(flex):
    """Compiled on CUDA in float32, decode steps in CUDA graphs (each new shape compiled in the
    eager run before its capture), with either decode attention: log-probs within 1e-4 of one
    full-sequence forward of the plain model, and the regions ran. 3 query heads a KV head of 64
    dimensions (SmolLM2's; FlexAttention's kernel needs 16 or more)."""
    model = model_of(heads=6, head_dim=64).cuda()
    fused = copy.deepcopy(model)
    fuse_projections(fused)
    engine = RolloutEngine(fused, TOK, slots=16, stop_ids=[], regions=True,
                           decode_attention="flex" if flex else "efficient")
    assert engine.regions and engine.graphs.warm
    ps = prompts(24)
    gens = engine.generate_batch(ps, SamplingParams(max_new_tokens=20, temperature=0.7))
    err = logprob_errors(model, ps, gens, 0.7)
    assert err.max() < 1e-4
    assert engine.stats["graphs_recorded"] > 0
    from torch._dynamo.utils import counters
    assert counters["stats"]["unique_graphs"] > 0
