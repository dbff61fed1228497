"""The verl ERL driver end to end on CPU: real config composition and validation, real
ErlWorkflow episodes, the HF rollout engine behind the data-parallel policy adapter, the
DataProto path, ERL's installed loss, weight sync, checkpoints and an exact resume.

verl's FSDP workers need a GPU, so a CPU stand-in with the same five calls plays the worker
group; everything the driver does around them is the production code.
"""

import asyncio
import json
import types

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from verl import DataProto

from erl.envs.registry import make_env, make_tasks
from erl.memory import ReflectionMemory
from erl.trainers.verl.config import compose, validate
from erl.trainers.verl.hf_rollout import HFRolloutEngine
from erl.trainers.verl.loss import make_loss_fn
from erl.trainers.verl.rollout import WorkerGroupPolicy
from erl.trainers.verl.trainer import ErlVerlTrainer
from erl.workflow.factories import chat_agent_for


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from erl.models.tiny import build_tiny_model, build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny")
    tok = build_tiny_tokenizer()
    build_tiny_model(tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _response_logprobs(model, data, temperature):
    b = data.batch
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"])
    P = b["prompts"].shape[1]
    logits = out.logits[:, P - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)


class CpuWorkers:
    """The worker group's calls, on one CPU process (dp_size 2 to exercise the padding)."""

    def __init__(self, folder, loss, temperature):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        self.ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.loss_fn = make_loss_fn(loss)  # exactly what set_loss_fn installs on the GPU workers
        self.t = temperature
        self.dp_size = 2
        self.engine = None
        self.synced = []

    def compute_log_prob(self, td, data):
        assert len(data) % self.dp_size == 0
        self.old_log_prob_calls = getattr(self, "old_log_prob_calls", 0) + 1
        with torch.no_grad():
            return _response_logprobs(self.model, data, self.t)

    def compute_ref_log_prob(self, td, data):
        with torch.no_grad():
            return _response_logprobs(self.ref, data, self.t)

    def update_actor(self, td):
        from verl.utils import tensordict_utils as tu

        b = td
        P = b["prompts"].shape[1]
        inp = torch.cat([b["prompts"], b["responses"]], 1)
        attn = b["attention_mask"]
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        metrics = {}
        for _ in range(int(tu.get(td, "epochs"))):
            logits = self.model(input_ids=inp, attention_mask=attn, position_ids=pos).logits[:, P - 1:-1] / self.t
            lp = torch.log_softmax(logits.float(), -1).gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1)
            seqs = []  # verl's engine output layout: row's real tokens, value of token t+1 at t
            for i in range(len(lp)):
                p, r = int(attn[i, :P].sum()), int(attn[i, P:].sum())
                seqs.append(torch.cat([torch.zeros(p - 1), lp[i, :r], torch.zeros(1)]))
            tu.assign_non_tensor(td, batch_num_tokens=int(b["response_mask"].sum()), dp_size=1)
            loss, m = self.loss_fn(model_output={"log_probs": torch.nested.as_nested_tensor(seqs, layout=torch.jagged)},
                                   data=td, dp_group=None)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            for k, v in m.items():
                metrics.setdefault(k, []).append(v)
        return metrics

    def sync_weights(self, step):
        self.synced.append(step)
        self.engine.load_named_tensors(self.model.named_parameters())

    def save_checkpoint(self, path, step, keep):
        import os

        os.makedirs(path, exist_ok=True)
        torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict()}, f"{path}/state.pt")

    def load_checkpoint(self, path):
        state = torch.load(f"{path}/state.pt", weights_only=False)  # as verl's FSDP checkpoint manager does
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])

    def max_memory_gb(self):
        return 0.0


class ListTracker:
    def __init__(self):
        self.rows, self.samples = {}, {}

    def log(self, step, metrics):
        self.rows[step] = dict(metrics)

    def log_samples(self, step, records):
        self.samples[step] = list(records)


def _trainer(folder, out, extra=()):
    cfg = compose("frozenlake_erl", [
        f"actor_rollout_ref.model.path={folder}", "actor_rollout_ref.rollout.name=hf",
        "trainer.n_gpus_per_node=2", "data.train_batch_size=2", "erl.n_attempt=2", "erl.max_new_tokens=12",
        "erl.max_reflection_tokens=12", "erl.max_turns=2", "erl_trainer.eval_tasks=2", "env.n_train=8",
        "env.n_val=2", "trainer.total_training_steps=3", "trainer.save_freq=2", "trainer.test_freq=2",
        f"trainer.default_local_dir={out}", "erl.tau=1.0", "erl.reflection_require_tag=false",
        # the driver's own collect unless a test asks for the workers' (the hf default: _in_workers)
        "erl_trainer.collect_in_workers=false", *extra])
    s = validate(cfg)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(s.model_path)
    workers = CpuWorkers(folder, s.loss, s.erl.temperature)
    workers.engine = HFRolloutEngine(types.SimpleNamespace(max_num_seqs=64),
                                     types.SimpleNamespace(local_path=str(folder), path=str(folder), tokenizer=tok))
    assert type(workers.engine.policy).__name__ == "RolloutEngine"  # engine_kwargs.hf.engine: auto (default)

    def dp_generate(data):  # what Dispatch.DP_COMPUTE_PROTO does: equal chunks, one per worker
        return DataProto.concat([workers.engine.generate_proto(c) for c in data.chunk(workers.dp_size)])

    policy = WorkerGroupPolicy(tok, dp_generate, dp_size=workers.dp_size)
    memory = ReflectionMemory(max_size=s.erl.memory_size, top_k=s.erl.memory_top_k)
    train = make_tasks("frozenlake", 8, seed=0, split="train")
    val = make_tasks("frozenlake", 2, seed=0, split="val")
    return ErlVerlTrainer(s, tok, workers, policy, memory, train, val, chat_agent_for, make_env,
                          tracker=ListTracker())


@pytest.mark.slow
def test_fit_checkpoint_and_exact_resume(tiny_folder, tmp_path):
    a = _trainer(tiny_folder, tmp_path / "run")
    a.fit()
    rows = a.tracker.rows
    assert sorted(rows) == [0, 1, 2, 3]  # step 0: eval before training
    m1 = rows[1]
    # tau 1: every episode short of full success reflects (2 tasks x n=2 episodes, none solved)
    assert m1["episodes"] == 4 and m1["reflection/rate"] == 1.0
    assert m1["attempt1/rows"] == 4 and m1["reflection/rows"] == 4
    assert m1["tokens/generated"] > 0 and m1["time/step"] > 0 and "actor/erl/pg_loss" in m1
    # episodes advance together: far fewer generate calls than sequences, at least one per round
    # (attempt 1 -> reflection -> attempt 2, max_turns 2: >= 3 rounds of the slowest episode)
    assert 3 <= m1["rollout/batches"] < m1["rollout/sequences"]
    assert 0 < m1["time/reflection"] < m1["time/rollout"]
    # this step's mean memory hits per episode stays, the store's running total is kept apart
    assert "memory/hits" in m1 and "memory/total_hits" in m1 and "memory/size" in m1
    assert "eval/success" in rows[2] and "eval/success" not in rows[1]
    # erl_trainer.log_episodes (2): each step's first episodes as text, all three segments
    assert sorted(a.tracker.samples) == [1, 2, 3] and all(len(v) == 2 for v in a.tracker.samples.values())
    assert [t["name"] for t in a.tracker.samples[1][0]["trajectories"]] == ["attempt1", "reflection", "attempt2"]
    assert a.workers.synced == [0, 1, 2, 3]  # initial sync + one after every update
    # verl's checkpoint layout + ERL's cursor and memory
    ck = tmp_path / "run" / "global_step_2"
    assert (ck / "actor" / "state.pt").is_file() and (ck / "erl_memory.json").is_file()
    assert json.loads((ck / "erl_state.json").read_text()) == {"step": 2, "cursor": 4, "seed": 0}
    assert (tmp_path / "run" / "latest_checkpointed_iteration.txt").read_text() == "3"

    b = _trainer(tiny_folder, tmp_path / "run",
                 ["trainer.resume_mode=resume_path", f"trainer.resume_from_path={ck}"])
    b.fit()
    assert sorted(b.tracker.rows) == [3] and b.cursor == 6
    r3a, r3b = rows[3], b.tracker.rows[3]
    for key in ("attempt1/success", "tokens/generated", "rows", "tokens/total", "reflection/parse_fail_rate"):
        assert r3a[key] == r3b[key], key
    assert r3a["actor/erl/pg_loss"] == pytest.approx(r3b["actor/erl/pg_loss"], abs=1e-5)


def test_rlvr_runs_twice_the_first_attempts_and_no_memory(tiny_folder, tmp_path):
    t = _trainer(tiny_folder, tmp_path / "rlvr", ["erl.mode=rlvr", "trainer.total_training_steps=1",
                                                   "trainer.val_before_train=false"])
    m = t.step()
    # compute matching: 2 tasks x 2n = 8 first attempts, no reflection rows
    assert m["episodes"] == 8 and m["attempt1/rows"] == 8 and m["reflection/rows"] == 0
    assert t.workflow.memory is None
    # one epoch over one mini-batch is on-policy: no forward pass for old log-probs, ratio 1
    assert getattr(t.workers, "old_log_prob_calls", 0) == 0
    assert m["actor/erl/pg_clipfrac"] == 0.0


def test_several_ppo_epochs_recompute_the_old_log_probs(tiny_folder, tmp_path):
    t = _trainer(tiny_folder, tmp_path / "epochs", ["erl.mode=rlvr", "trainer.total_training_steps=1",
                                                     "trainer.val_before_train=false",
                                                     "actor_rollout_ref.actor.ppo_epochs=2"])
    t.step()
    assert t.workers.old_log_prob_calls == 1


def test_benchmark_side_by_side(tiny_folder, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "verl_step.py"
    spec = importlib.util.spec_from_file_location("verl_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fast = ["erl.max_turns=1", "trainer.val_before_train=false"]
    erl = _trainer(tiny_folder, tmp_path / "e", fast)
    rlvr = _trainer(tiny_folder, tmp_path / "r", fast + ["erl.mode=rlvr"])
    res = bench.side_by_side(erl, rlvr, warmup=0, steps=1)
    # compute matching: RLVR's 2 tasks x 2n = 8 first attempts; ERL 4 first + 4 reflections + 4 second
    assert res["rlvr"]["rows"] == 8 and res["erl"]["rows"] >= 8
    assert res["ratio/step_time"] == pytest.approx(res["erl"]["time/step"] / res["rlvr"]["time/step"])
    assert "ERL / RLVR step time" in bench.report(res)


def test_dead_rollout_worker_fails_the_step_and_keeps_the_last_checkpoint(tiny_folder, tmp_path):
    t = _trainer(tiny_folder, tmp_path / "dead", ["trainer.val_before_train=false"])
    t.save_checkpoint()  # a valid checkpoint at step 0

    def died(data):
        raise RuntimeError("rollout worker 0 died: CUDA error")

    t.policy.generate_fn = died
    with pytest.raises(RuntimeError, match="rollout worker 0 died"):
        t.fit()
    assert (tmp_path / "dead" / "latest_checkpointed_iteration.txt").read_text() == "0"
    assert t.find_resume() == tmp_path / "dead" / "global_step_0" and t.step_count == 0


def test_dead_memory_actor_fails_the_step_and_keeps_the_last_checkpoint(tiny_folder, tmp_path):
    from erl.trainers.verl.memory import BlockingMemory

    t = _trainer(tiny_folder, tmp_path / "deadmem", ["trainer.val_before_train=false"])
    t.save_checkpoint()

    class DeadClient:  # alive for the resume's restore, then gone: what RayMemoryClient raises
        def load_state_dict(self, state):
            pass

        def retrieve_sync(self, *a, **k):
            raise RuntimeError("memory actor 'erl_reflection_memory' is dead or unreachable: ActorDiedError")

        def add_sync(self, *a, **k):
            raise AssertionError("no second attempt can run without its reflection")

    t.memory = t.workflow.memory = BlockingMemory(DeadClient())
    with pytest.raises(RuntimeError, match="'erl_reflection_memory' is dead or unreachable"):
        t.fit()  # tau 1: the first episode to reflect asks the memory
    assert (tmp_path / "deadmem" / "latest_checkpointed_iteration.txt").read_text() == "0"
    assert t.find_resume() == tmp_path / "deadmem" / "global_step_0" and t.step_count == 0


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")  # unpickling it creates the marker file


def test_crafted_actor_file_is_refused_before_verl_unpickles_it(tiny_folder, tmp_path):
    from erl.fileio import CheckpointError

    t = _trainer(tiny_folder, tmp_path / "evil", ["trainer.val_before_train=false"])
    folder = t.save_checkpoint()
    t.load_checkpoint(folder)  # a checkpoint of tensors and plain data loads
    marker = tmp_path / "payload_ran"
    torch.save({"model": Payload(marker), "opt": {}}, folder / "actor" / "state.pt")
    with pytest.raises(CheckpointError, match=r"state.pt would call \['io.open'\]"):
        t.load_checkpoint(folder)
    assert not marker.exists()


def test_resume_from_an_older_checkpoint_moves_the_later_ones_aside(tiny_folder, tmp_path):
    out = tmp_path / "branch"
    t = _trainer(tiny_folder, out, ["trainer.val_before_train=false"])
    t.save_checkpoint()
    t.step_count = 2
    t.save_checkpoint()
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": k}) + "\n" for k in range(3)))
    (out / "samples.jsonl").write_text("".join(json.dumps({"step": k, "episode": "e"}) + "\n" for k in (1, 2)))
    b = _trainer(tiny_folder, out, ["trainer.resume_mode=resume_path", f"trainer.resume_from_path={out}/global_step_0"])
    assert b.start_timeline(b.find_resume()) == 0
    archive, = (out / "superseded").iterdir()
    assert sorted(p.name for p in archive.iterdir()) == ["global_step_2", "metrics.jsonl", "samples.jsonl"]
    # a later resume_mode=auto continues the new timeline, not the replaced one
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "0"
    assert sorted(p.name for p in out.glob("global_step_*")) == ["global_step_0"]
    c = _trainer(tiny_folder, out, ["trainer.resume_mode=disable"])
    assert c.start_timeline(c.find_resume()) == -1  # from scratch: the whole earlier run moves aside
    assert not list(out.glob("global_step_*")) and not (out / "metrics.jsonl").exists()
    assert not (out / "samples.jsonl").exists()  # moved aside with the metrics, not appended to
    assert not (out / "latest_checkpointed_iteration.txt").exists()


def test_reflection_time_is_the_union_of_overlapping_spans():
    from erl.trainers.driver import TimedWorkflow

    wf = TimedWorkflow.__new__(TimedWorkflow)
    wf.reflect_spans = [(1.0, 3.0), (0.0, 2.0), (5.0, 6.0), (5.5, 5.8)]
    # [0, 3] and [5, 6]: 3 + 1 = 4 seconds with a reflection in flight
    assert wf.take_reflection_time() == pytest.approx(4.0)
    assert wf.take_reflection_time() == 0.0  # reset after reading


def test_server_policy_talks_to_verl_rollout_servers():
    """vLLM / SGLang path: one request per call through verl's LLMServerClient.generate."""
    import asyncio

    from erl.core.interfaces import SamplingParams
    from erl.models.tiny import build_tiny_tokenizer
    from erl.trainers.verl.rollout import ServerPolicy

    tok = build_tiny_tokenizer()
    hi = tok.encode("hi", add_special_tokens=False)
    assert len(hi) == 2
    calls = []

    class FakeClient:  # the shape of verl.workers.rollout.llm_server.LLMServerClient
        async def generate(self, request_id, *, prompt_ids, sampling_params):
            calls.append((request_id, prompt_ids, dict(sampling_params)))
            stop = sampling_params["stop_token_ids"][0]
            return types.SimpleNamespace(token_ids=[*hi, stop], log_probs=[-0.1, -0.2, -0.3])

    policy = ServerPolicy(tok, FakeClient())
    gen = asyncio.run(policy.generate([1, 2], SamplingParams(max_new_tokens=5, temperature=0.7)))
    assert gen.token_ids[:2] == hi and gen.logprobs == [-0.1, -0.2, -0.3]
    assert gen.finish_reason == "stop" and gen.text == "hi"
    (_, prompt, sp), = calls
    assert prompt == [1, 2] and sp["max_tokens"] == 5 and sp["temperature"] == 0.7 and sp["logprobs"] is True
    greedy = asyncio.run(policy.generate([1], SamplingParams(max_new_tokens=2, temperature=0.0)))
    assert calls[-1][2]["temperature"] == 0.0 and len(greedy.token_ids) == 2 and greedy.finish_reason == "length"


def test_hf_rollout_fused_copy_takes_weight_syncs(tiny_folder):
    """`engine_kwargs.hf.fused` (default on CUDA, asked for here on CPU): the generation copy's
    projections run fused, and verl's weight sync, written into the modules' weights in place,
    reaches the fused tensors: after a sync the copy samples what the synced model samples."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_folder))
    model_cfg = types.SimpleNamespace(local_path=str(tiny_folder), path=str(tiny_folder), tokenizer=tok)
    fused = HFRolloutEngine(types.SimpleNamespace(max_num_seqs=8, engine_kwargs={"hf": {"fused": True}}), model_cfg)
    plain = HFRolloutEngine(types.SimpleNamespace(max_num_seqs=8, engine_kwargs={"hf": {"fused": False}}), model_cfg)
    assert hasattr(fused.model.model.layers[0].self_attn, "erl_qkv")
    assert not hasattr(plain.model.model.layers[0].self_attn, "erl_qkv")
    trained = AutoModelForCausalLM.from_pretrained(str(tiny_folder))
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for engine in (fused, plain):
        engine.load_named_tensors(trained.named_parameters())
    qkv = fused.model.model.layers[0].self_attn.erl_qkv.weight
    attn = trained.model.layers[0].self_attn
    assert torch.equal(qkv, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    prompts = [tok.encode("go left"), tok.encode("go up now")]
    got, want = fused.generate(prompts, 0.0, 1.0, 6), plain.generate(prompts, 0.0, 1.0, 6)
    assert [g.token_ids for g in got] == [g.token_ids for g in want]
    for g, w in zip(got, want):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)


def test_hf_rollout_mixed_copy_runs_under_its_autocast_and_follows_syncs(tiny_folder):
    """`engine_kwargs.hf.precision=mixed` (the default on CUDA, asked for here on CPU): the local
    trainer's bf16 rollout copy, whose fp32 hidden states the engine's fused norms and compiled
    regions take. Its linears are bf16, so it generates only under its autocast: on the caller's
    thread and on the thread a phase runs on inside a running event loop (verl's async actor). The
    tied head, untied by the cast, follows the embedding a weight sync writes (a tied model's named
    parameters name only the embedding). Its log-probs are the fp32 copy's to bf16's precision."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from erl.trainers.verl.worker_collect import WorkerCollector

    tok = AutoTokenizer.from_pretrained(str(tiny_folder))
    model_cfg = types.SimpleNamespace(local_path=str(tiny_folder), path=str(tiny_folder), tokenizer=tok)
    mixed = HFRolloutEngine(types.SimpleNamespace(max_num_seqs=8, engine_kwargs={"hf": {"precision": "mixed"}}),
                            model_cfg)
    fp32 = HFRolloutEngine(types.SimpleNamespace(max_num_seqs=8), model_cfg)
    layer = mixed.model.model.layers[0]
    assert (layer.self_attn.q_proj.weight.dtype, layer.input_layernorm.weight.dtype) == (torch.bfloat16, torch.float32)
    assert mixed.model.model.embed_tokens.weight.dtype == torch.float32 and mixed.model.lm_head.weight.dtype == torch.bfloat16
    assert fp32.precision == "fp32" and layer.self_attn.q_proj.weight.dtype != fp32.model.model.layers[0].self_attn.q_proj.weight.dtype
    trained = AutoModelForCausalLM.from_pretrained(str(tiny_folder))
    torch.manual_seed(0)  # whatever ran before: greedy tokens near a tie could otherwise differ in bf16
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert "lm_head.weight" not in dict(trained.named_parameters())
    for engine in (mixed, fp32):
        engine.load_named_tensors(trained.named_parameters())
    assert torch.equal(mixed.model.lm_head.weight, trained.model.embed_tokens.weight.to(torch.bfloat16))
    prompts = [tok.encode("go left"), tok.encode("go up now")]
    got, want = mixed.generate(prompts, 0.0, 1.0, 6), fp32.generate(prompts, 0.0, 1.0, 6)
    assert not torch.is_autocast_enabled("cpu")  # entered for the generation only
    for g, w in zip(got, want):
        n = next((i for i, (a, b) in enumerate(zip(g.token_ids, w.token_ids)) if a != b), len(w.token_ids))
        assert n >= 1 and g.logprobs[:n] == pytest.approx(w.logprobs[:n], abs=0.05)

    async def actor_method():  # a phase inside a running loop runs on a thread of its own
        return WorkerCollector(mixed.policy, context=mixed.context).run(
            [{"task": task} for task in make_tasks("frozenlake", 2, seed=0, split="val")],
            {"spec": {"erl": {"max_new_tokens": 4, "max_turns": 1}, "max_context_tokens": 512, "runner": None,
                      "memory_actor": None}, "phase": "eval", "temperature": 1.0, "seed": 3})

    attempts, stats = asyncio.run(actor_method())
    assert len(attempts) == 2 and stats["sequences"] == 2


def test_hf_rollout_engine_choice(tiny_folder):
    """rollout.engine_kwargs.hf.engine picks the generation path of verl's `hf` rollout: the
    engine by default (as the local trainer's rollout_engine=auto), batched generate with `hf`;
    the override composes against verl's own RolloutConfig."""
    from transformers import AutoTokenizer

    from erl.trainers.verl.config import compose

    rollout = compose("frozenlake_erl", ["+actor_rollout_ref.rollout.engine_kwargs.hf.engine=hf"]).actor_rollout_ref.rollout
    assert rollout.engine_kwargs.hf.engine == "hf"
    tok = AutoTokenizer.from_pretrained(str(tiny_folder))
    model_cfg = types.SimpleNamespace(local_path=str(tiny_folder), path=str(tiny_folder), tokenizer=tok)
    chosen = [type(HFRolloutEngine(types.SimpleNamespace(max_num_seqs=8, engine_kwargs=kw), model_cfg).policy).__name__
              for kw in ({}, {"hf": {"engine": "hf"}}, {"hf": {"engine": "engine"}})]
    assert chosen == ["RolloutEngine", "HFPolicy", "RolloutEngine"]
    # the local preset's engine settings reach the workers' engines too; both are CUDA-only, so here
    # the engine refuses them, which shows they arrived; an unknown copy precision is refused too
    for kw, refusal in (({"decode_attention": "flex"}, "flex' needs varlen_decode"), ({"regions": True}, "regions needs CUDA"),
                        ({"precision": "fp16"}, "precision must be one of")):
        with pytest.raises(ValueError, match=refusal):
            HFRolloutEngine(types.SimpleNamespace(max_num_seqs=8, engine_kwargs={"hf": kw}), model_cfg)


def test_a_phase_resets_the_workers_engines_so_a_resumed_step_samples_alike(tiny_folder):
    """The driver's run_phase reset reaches the hf workers' engines: after WorkerGroupPolicy.reset,
    the next batch (only that one) carries `reset`, and an engine that ran an earlier step then
    samples, under the same seed, what a new engine samples. Without it the earlier step's slot
    history moved two of these four requests to other rows and other draws (the 2-GPU resume
    check of docs/gpu/gpu2_scaling: resumed and control equal, both unlike the original run)."""
    from transformers import AutoTokenizer

    from erl.core.interfaces import SamplingParams

    tok = AutoTokenizer.from_pretrained(str(tiny_folder))
    model_cfg = types.SimpleNamespace(local_path=str(tiny_folder), path=str(tiny_folder), tokenizer=tok)

    def policy(flags):
        engine = HFRolloutEngine(types.SimpleNamespace(max_num_seqs=8), model_cfg)

        def generate(data):
            flags.append(data.meta_info.get("reset"))
            return engine.generate_proto(data)
        return WorkerGroupPolicy(tok, generate, dp_size=1)

    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    earlier = [tok.encode(t) for t in ("go left then up", "down", "right right")]
    step = [tok.encode(t) for t in ("go left", "go up now", "stay", "go left then down")]
    used_flags, new_flags = [], []
    used, new = policy(used_flags), policy(new_flags)
    used.seed = 5
    used.generate_batch(earlier, params)
    used.reset()
    used.seed = 7
    got = used.generate_batch(step, params)
    used.generate_batch(step, params)
    new.seed = 7
    want = new.generate_batch(step, params)
    assert used_flags == [None, True, None] and new_flags == [None]
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    for g, w in zip(got, want):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)


def _in_workers(folder, out, extra=(), dp=2):
    """The trainer with erl_trainer.collect_in_workers: the stand-in worker group splits a phase's
    items as DP_COMPUTE_PROTO does and runs each share through HFRolloutEngine.collect_proto
    (every share on the one CPU engine, with the trainer's local memory); the driver's own
    generate path must not be used."""
    from erl.trainers.driver import seed_all
    from erl.trainers.verl.group import collect_in
    from erl.trainers.verl.worker_collect import WorkerCollector

    t = _trainer(folder, out, ["erl_trainer.collect_in_workers=true", *extra])
    t.workers.dp_size = dp
    t.policy.generate_fn = lambda data: pytest.fail("the driver's generate path ran")
    engine = t.workers.engine
    class StateOnly:  # what a worker may do with the job's memory: read its state, never call it
        def state_dict(self):
            return t.memory.state_dict()

    engine.collector = WorkerCollector(engine.policy, memory=StateOnly())
    shares = []

    def erl_collect(data):
        chunks = data.chunk(t.workers.dp_size)
        shares.append([len(c) for c in chunks])
        outs = []
        for c in chunks:
            seed_all(987)  # a worker process's generators are its own: the phase's seed must reach them
            outs.append(engine.collect_proto(c))
        return DataProto.concat(outs)

    t.workers.collect = lambda items, meta: collect_in(erl_collect, t.workers.dp_size, items, meta)
    t.shares = shares
    return t


def test_collect_in_workers_runs_the_episodes_on_the_workers_engines(tiny_folder, tmp_path):
    """Each worker runs its share of the step's episodes (2 tasks x n=2 over 2 workers: 2 each) and the
    eval's attempts on its engine; the step's counters are the engine's; the driver's memory sees
    what the workers stored, and the step trains as before."""
    t = _in_workers(tiny_folder, tmp_path / "w", ["trainer.total_training_steps=1"])
    before = dict(t.workers.engine.policy.stats)
    m = t.step()
    engine = t.workers.engine.policy.stats
    assert t.shares == [[2, 2]]
    assert m["episodes"] == 4 and m["reflection/rate"] == 1.0 and m["attempt1/rows"] == 4
    assert m["tokens/generated"] == engine["generated_tokens"] - before["generated_tokens"] > 0
    assert m["rollout/sequences"] == engine["sequences"] - before["sequences"]
    assert 0 < m["time/reflection"] < m["time/rollout"] and "actor/erl/pg_loss" in m
    assert m["memory/size"] == len(t.memory)
    # each worker's episodes retrieved from their own copy of the memory (StateOnly: never from the
    # job's); the driver replayed those calls on the job's memory, one retrieval a reflection
    assert t.memory.stats()["retrievals"] == 4
    ev = t.evaluate()
    assert t.shares[-1] == [1, 1] and 0 <= ev["eval/success"] <= 1  # 2 val tasks, one a worker


@pytest.mark.slow
def test_collect_in_workers_resumes_exactly(tiny_folder, tmp_path):
    """Two workers, the memory written through their journals: step 3 of a run resumed from its
    step-2 checkpoint samples and trains as the original's step 3."""
    a = _in_workers(tiny_folder, tmp_path / "run")
    a.fit()
    ck = tmp_path / "run" / "global_step_2"
    b = _in_workers(tiny_folder, tmp_path / "run", ["trainer.resume_mode=resume_path",
                                                    f"trainer.resume_from_path={ck}"])
    b.fit()
    r3a, r3b = a.tracker.rows[3], b.tracker.rows[3]
    assert sorted(b.tracker.rows) == [3] and r3a["episodes"] == 4
    for key in ("attempt1/success", "tokens/generated", "rows", "tokens/total", "memory/size", "memory/hits"):
        assert r3a[key] == r3b[key], key
    assert r3a["actor/erl/pg_loss"] == pytest.approx(r3b["actor/erl/pg_loss"], abs=1e-5)
    assert a.memory.state_dict() == b.memory.state_dict()


def test_collect_in_one_worker_samples_what_the_driver_samples_on_that_engine(tiny_folder, tmp_path):
    """One worker: the episodes it returns are token for token the driver's own collect with the
    same engine as its policy (the local trainer's way): the workflow, seed, step, memory and the
    engine's reset reach the worker as the driver has them."""
    w = _in_workers(tiny_folder, tmp_path / "w", ["trainer.total_training_steps=1"], dp=1)
    d = _trainer(tiny_folder, tmp_path / "d", ["trainer.total_training_steps=1"])
    d.policy = d.workflow.policy = d.workers.engine.policy
    tasks = w.next_tasks()
    got = {}
    for name, t in (("workers", w), ("driver", d)):
        t.seed_sampling(1234)
        got[name] = t.collect(tasks)
    assert len(got["workers"]) == len(got["driver"]) == 4
    assert sum(len(s.response_ids) for e in got["workers"] for tr in e.trajectories for s in tr.steps) > 0
    for a, b in zip(got["workers"], got["driver"]):
        assert a.id == b.id and [tr.name for tr in a.trajectories] == [tr.name for tr in b.trajectories]
        for ta, tb in zip(a.trajectories, b.trajectories):
            assert [s.response_ids for s in ta.steps] == [s.response_ids for s in tb.steps]
            assert ta.reward == tb.reward
    assert len(w.memory) == len(d.memory)


def test_collect_in_pads_a_share_with_nothing_and_keeps_the_order():
    """3 items over 2 workers: the second worker's share ends in a pad that runs nothing; the
    results come back in the items' order, and each worker's counters once."""
    from erl.trainers.verl.group import collect_in
    from erl.trainers.verl.worker_collect import merge_stats

    def erl_collect(data):
        outs = []
        for k, c in enumerate(data.chunk(2)):
            items = list(c.non_tensor_batch["item"])
            results = [None if it is None else it["uid"].upper() for it in items]
            stats = [{"generated_tokens": 10 * (k + 1), "sequences": 1, "batches": 1, "generate_seconds": 1.5 + k,
                      "reflection_seconds": 0.5}] + [None] * (len(items) - 1)
            outs.append(DataProto.from_dict(non_tensors={"result": np.array(results, dtype=object),
                                                         "stats": np.array(stats, dtype=object)}))
        return DataProto.concat(outs)

    results, stats = collect_in(erl_collect, 2, [{"uid": u} for u in "abc"], {"phase": "collect"})
    assert results == ["A", "B", "C"] and len(stats) == 2
    assert merge_stats(stats) == {"generated_tokens": 30.0, "batches": 2.0, "sequences": 2.0,
                                  "generate_seconds": 2.5, "reflection_seconds": 0.5}


def test_collect_in_workers_needs_the_hf_backend():
    from erl.core.config import ConfigError

    base = ["actor_rollout_ref.model.path=/nonexistent", "erl_trainer.collect_in_workers=true"]
    with pytest.raises(ConfigError, match="collect_in_workers needs actor_rollout_ref.rollout.name=hf"):
        validate(compose("frozenlake_erl", [*base, "actor_rollout_ref.rollout.name=vllm"]), check_model_files=False)
    with pytest.raises(ConfigError, match="collect_in_workers"):
        validate(compose("frozenlake_erl", [*base[:1], "actor_rollout_ref.rollout.name=hf",
                                            "erl_trainer.collect_in_workers=sometimes"]), check_model_files=False)
    # left unset (null): on with the hf rollout, off with a server rollout, which it would refuse
    for backend, resolved in (("hf", True), ("vllm", False), ("sglang", False)):
        s = validate(compose("frozenlake_erl", [*base[:1], f"actor_rollout_ref.rollout.name={backend}"]),
                     check_model_files=False)
        assert s.trainer.collect_in_workers is resolved, backend


def test_a_worker_whose_event_loop_runs_still_collects(tiny_folder, tmp_path):
    """verl's worker is a Ray async actor: its methods run while the actor's event loop runs, where
    asyncio.run refuses. collect_proto called from inside a running loop returns the same
    episodes as from a plain thread."""
    t = _in_workers(tiny_folder, tmp_path / "w", ["trainer.total_training_steps=1"], dp=1)
    items = [{"task": task, "uid": f"{task['task_id']}:0"} for task in t.next_tasks()]
    meta = {"spec": t.spec, "phase": "collect", "seed": 7, "step": 0, "temperature": None}
    data = DataProto.from_dict(non_tensors={"item": np.array(items, dtype=object)}, meta_info=meta)
    plain = t.workers.engine.collect_proto(data)

    async def actor_method():
        return t.workers.engine.collect_proto(data)

    inside = asyncio.run(actor_method())
    for a, b in zip(plain.non_tensor_batch["result"], inside.non_tensor_batch["result"]):
        assert [s.response_ids for tr in a.trajectories for s in tr.steps] == \
            [s.response_ids for tr in b.trajectories for s in tr.steps]
    assert inside.non_tensor_batch["stats"][0]["sequences"] > 0


def test_workers_of_other_ranks_draw_other_tokens(tiny_folder, tmp_path, monkeypatch):
    """The same items on rank 0 and rank 1 (same seed, engines reset alike): other draws, so that
    tasks with the same grid on two workers do not sample the same episodes; rank 0 keeps the
    driver's seed (the one-worker test above)."""
    from erl.trainers.verl import worker_collect

    t = _in_workers(tiny_folder, tmp_path / "w", ["trainer.total_training_steps=1"], dp=1)
    items = [{"task": task, "uid": f"{task['task_id']}:0"} for task in t.next_tasks()]
    meta = {"spec": t.spec, "phase": "collect", "seed": 7, "step": 0, "temperature": None}
    tokens = {}
    for rank in (0, 1):
        monkeypatch.setattr(worker_collect, "worker_rank", lambda r=rank: r)
        results, _ = t.workers.engine.collector.run(items, meta)
        tokens[rank] = [s.response_ids for e in results for tr in e.trajectories for s in tr.steps]
    assert tokens[0] != tokens[1]


def test_the_workers_erl_methods_refuse_another_rollout_backend():
    """erl_generate and erl_collect need this package's hf backend in the worker; a vLLM rollout
    there is named in the error instead of failing on a missing attribute."""
    from erl.trainers.verl.workers import ErlActorRolloutRefWorker

    class vLLMAsyncRollout:  # named as verl's
        pass

    worker = types.SimpleNamespace(rollout=vLLMAsyncRollout())
    for method in ("erl_generate", "erl_collect"):
        with pytest.raises(RuntimeError, match=f"{method} needs the hf rollout backend, this worker runs vLLMAsyncRollout"):
            ErlActorRolloutRefWorker._hf_rollout(worker, method)
    hf = types.SimpleNamespace(rollout=types.SimpleNamespace(generate_proto=None))
    assert ErlActorRolloutRefWorker._hf_rollout(hf, "erl_collect") is hf.rollout


def test_collect_in_workers_fits_and_resumes_exactly(tiny_folder, tmp_path):
    """The whole loop with the episodes in two workers: three steps with evals and a checkpoint at
    step 2, then a run resumed from it samples step 3 as the first run did."""
    a = _in_workers(tiny_folder, tmp_path / "run")
    a.fit()
    assert sorted(a.tracker.rows) == [0, 1, 2, 3] and "eval/success" in a.tracker.rows[2]
    assert a.tracker.rows[1]["tokens/generated"] > 0 and a.tracker.rows[1]["time/reflection"] > 0
    ck = tmp_path / "run" / "global_step_2"
    b = _in_workers(tiny_folder, tmp_path / "run", ["trainer.resume_mode=resume_path", f"trainer.resume_from_path={ck}"])
    b.fit()
    r3a, r3b = a.tracker.rows[3], b.tracker.rows[3]
    for key in ("attempt1/success", "tokens/generated", "rows", "tokens/total", "memory/size", "eval/success"):
        assert r3a[key] == r3b[key], key
    assert r3a["actor/erl/pg_loss"] == pytest.approx(r3b["actor/erl/pg_loss"], abs=1e-5)
