"""Fused projections (erl.rollout.fused) and the one-kernel RMSNorm in the engine's forward: the
same tokens and log-probs as the modules one by one, weights that stay shared with the modules
(in-place writes and LoRA re-merges reach the fused matmul), and on CUDA against a teacher-forced
forward."""

import copy

import pytest
import torch
from test_rollout_engine import TOK, assert_same_draws, logprob_errors, lora_model, model_of, prompts

from erl.core.interfaces import SamplingParams
from erl.rollout.engine import RolloutEngine
from erl.rollout.fused import fuse_projections


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])  # qwen2: q/k/v biases fused too
def test_a_fused_copy_samples_what_the_modules_sample(kind):
    model = model_of(kind)
    fused = copy.deepcopy(model)
    assert fuse_projections(fused) == 4  # q/k/v and gate/up of 2 layers
    attn = fused.model.layers[0].self_attn
    assert attn.erl_qkv.sizes == (32, 16, 16)  # 4 heads x 8, 2 KV heads x 8, twice
    assert (attn.erl_qkv.bias is not None) == (kind == "qwen2")
    ps, params = prompts(6), SamplingParams(max_new_tokens=8, temperature=1.0)
    torch.manual_seed(0)
    want = RolloutEngine(model, TOK, slots=4, stop_ids=[]).generate_batch(ps, params)
    torch.manual_seed(0)
    engine = RolloutEngine(fused, TOK, slots=4, stop_ids=[])
    got = engine.generate_batch(ps, params)
    assert_same_draws(got, want, 1e-6)
    # and the fused tensors are what ran: zero them and the samples change
    with torch.no_grad():
        for layer in fused.model.layers:
            layer.mlp.erl_gate_up.weight.zero_()
    torch.manual_seed(0)
    assert [g.logprobs for g in engine.generate_batch(ps, params)] != [g.logprobs for g in want]


def test_fused_weights_stay_the_modules_weights():
    """The modules' weights are views into the fused tensor: a write through either is the other's
    (an optimizer step or weight sync on the copy, a LoRA re-merge), and the fused path can be
    switched off (the modules run, on the same numbers)."""
    model = model_of()
    fuse_projections(model)
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    with torch.no_grad():
        attn.k_proj.weight.add_(1.0)
        mlp.erl_gate_up.weight[-1].fill_(3.0)
    qkv = attn.erl_qkv.weight
    assert torch.equal(qkv, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    assert (mlp.up_proj.weight[-1] == 3.0).all()
    ps, params = prompts(3), SamplingParams(max_new_tokens=5, temperature=0.0)
    engine = RolloutEngine(model, TOK, slots=4, stop_ids=[])
    on = engine.generate_batch(ps, params)
    engine.fused = False
    off = engine.generate_batch(ps, params)
    assert [g.token_ids for g in on] == [g.token_ids for g in off]
    for a, b in zip(on, off):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-6)


def test_a_fused_merged_copy_follows_lora_updates():
    """MergedLoRA fuses its copy on CUDA; its refresh writes the re-merged weights in place, so the
    fused tensors carry every update (here fused by hand on CPU)."""
    from erl.rollout.merged import MergedLoRA

    model = lora_model()
    merged = MergedLoRA.of(model)
    assert not hasattr(merged.model.model.layers[1].self_attn, "erl_qkv")  # CPU: a forward costs its arithmetic
    assert merged.fused == 0
    fuse_projections(merged.model)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.3)  # layer 1's q_proj
    assert merged.refresh() is True
    attn = merged.model.model.layers[1].self_attn
    lora = model.get_base_model().model.layers[1].self_attn.q_proj
    want = lora.base_layer.weight + lora.get_delta_weight("default")
    assert torch.allclose(attn.erl_qkv.weight[:32], want.detach(), atol=1e-6)
    ids = torch.tensor([prompts(2)[1]])
    with torch.no_grad():
        assert torch.allclose(merged.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_forward_on_cuda_matches_a_teacher_forced_forward():
    """On CUDA in float32: fused q/k/v and gate/up, and RMSNorm as one kernel (F.rms_norm on the
    float32 residual stream), against one full-sequence forward of the plain model, to 1e-4."""
    model = model_of().cuda()
    fused = copy.deepcopy(model)
    fuse_projections(fused)
    engine = RolloutEngine(fused, TOK, slots=16, stop_ids=[])
    ps = prompts(24)
    gens = engine.generate_batch(ps, SamplingParams(max_new_tokens=20, temperature=0.7))
    err = logprob_errors(model, ps, gens, 0.7)
    assert err.max() < 1e-4
