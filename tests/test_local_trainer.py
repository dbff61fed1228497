"""The local trainer end to end with a tiny random model: every mode, resume, outputs, bad input."""

import asyncio
import copy
import dataclasses
import json
import math
import types
from pathlib import Path

import pytest
import torch

from erl.core.config import ConfigError
from erl.core.interfaces import SamplingParams
from erl.core.types import Segment, TokenSample
from erl.models.chat import chat_ids
from erl.models.tiny import build_tiny_model, build_tiny_tokenizer
from erl.rollout.hf_policy import HFPolicy
from erl.tracking import read_metrics
from erl.trainers.local.batch import pad_samples, response_logprobs
from erl.trainers.local.checkpoint import CheckpointError, load_checkpoint
from erl.trainers.local.run import build, train


def base_cfg(tmp_path: Path, mode: str = "erl", steps: int = 2, **trainer) -> dict:
    """Sizes that keep a step well under a second on 2 CPU cores."""
    return {
        "seed": 0, "resume": False,
        "erl": {"mode": mode, "n_attempt": 2, "max_turns": 3, "max_new_tokens": 8, "max_reflection_tokens": 16,
                "reflection_require_tag": False, "temperature": 1.0},
        "trainer": {"total_steps": steps, "tasks_per_step": 2, "lr": 1e-3, "micro_batch_size": 4, "eval_every": 1,
                    "eval_tasks": 2, "save_every": 1, "keep_checkpoints": 3, "output_dir": str(tmp_path / mode),
                    "loggers": ["console"], "progress": False, "precision": "fp32", "max_context_tokens": 1024, **trainer},
        "env": {"name": "frozenlake", "n_train": 8, "n_val": 4, "params": {"size_min": 2, "size_max": 2}},
        "model": {"path": "tiny", "tiny": {"hidden": 32, "layers": 1, "heads": 2}},
    }


def test_generation_logprobs_match_a_forward_pass():
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden=32, layers=1, heads=2)
    policy = HFPolicy(model, tok)
    prompts = [chat_ids(tok, [{"role": "user", "content": "go " * k}]) for k in (1, 4, 9)]  # ragged: left padding
    torch.manual_seed(0)
    gens = policy.generate_batch(prompts, SamplingParams(max_new_tokens=12, temperature=0.7))
    rows = [TokenSample(prompt_ids=p, response_ids=g.token_ids, response_mask=[1] * len(g.token_ids),
                        logprobs=g.logprobs, segment=Segment.ATTEMPT1) for p, g in zip(prompts, gens)]
    batch = pad_samples(rows, policy.pad_id)
    with torch.no_grad():
        recomputed, entropy = response_logprobs(model, batch, temperature=0.7, with_entropy=True)
    for i, (p, g) in enumerate(zip(prompts, gens)):
        n = len(g.token_ids)
        assert n >= 1 and g.finish_reason in ("stop", "length")
        assert torch.allclose(recomputed[i, :n], torch.tensor(g.logprobs), atol=1e-4)
        # the entropy of the distribution each token was sampled from: the row alone, unpadded
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + g.token_ids])).logits[0, len(p) - 1:len(p) - 1 + n] / 0.7
        assert torch.allclose(entropy[i, :n], torch.distributions.Categorical(logits=logits).entropy(), atol=1e-5)


def test_batched_policy_serves_concurrent_requests_in_one_batch():
    tok = build_tiny_tokenizer()
    policy = HFPolicy(build_tiny_model(tok, hidden=32, layers=1, heads=2), tok)
    params = SamplingParams(max_new_tokens=4, temperature=1.0)

    async def many():
        return await asyncio.gather(*[policy.generate(chat_ids(tok, [{"role": "user", "content": str(k)}]), params)
                                      for k in range(5)])

    gens = asyncio.run(many())
    assert len(gens) == 5 and policy.stats["batches"] == 1 and policy.stats["sequences"] == 5


@pytest.mark.parametrize("mode", ["erl", "rlvr", "no_reflection", "no_memory"])
def test_two_steps_in_each_mode(tmp_path, mode):
    cfg = base_cfg(tmp_path, mode)
    last = train(cfg)
    out = Path(cfg["trainer"]["output_dir"])
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 0 = eval before training
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "checkpoints" / "step_2" / "model.safetensors").is_file()
    step = rows[1]
    # rlvr: 2 tasks x 2n = 8 first attempts; erl & ablations: 2 tasks x n = 4
    assert step["episodes"] == (8 if mode == "rlvr" else 4)
    assert step["attempt1/rows"] >= step["episodes"]
    if mode == "rlvr":
        assert step["reflection/rate"] == 0 and step["attempt2/rows"] == 0
    if mode == "no_reflection":
        assert step["reflection/rows"] == 0
    for key in ("loss/pg_loss", "loss/grad_norm", "time/rollout", "time/update", "eval/success"):
        assert key in step, key
    assert "eval/success" in last
    json.loads((out / "config.json").read_text())


LORA = {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_reproduces_the_next_step(tmp_path, lora):
    """With LoRA the rollout decodes with a merged copy (erl.rollout.merged), re-merged from the
    loaded adapters after the resume: the next step is still the uninterrupted one."""
    full = base_cfg(tmp_path / "a", steps=3)
    part = base_cfg(tmp_path / "b", steps=2)
    if lora:
        full["model"]["lora"] = part["model"]["lora"] = LORA
    train(full)
    train(part)  # "killed" after step 2 (checkpoint written)
    resumed = copy.deepcopy(part)
    resumed["trainer"]["total_steps"] = 3
    resumed["resume"] = True
    train(resumed)
    a = read_metrics(Path(full["trainer"]["output_dir"]) / "metrics.jsonl")
    b = read_metrics(Path(part["trainer"]["output_dir"]) / "metrics.jsonl")
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    skip = ("time/", "throughput/", "system/", "perf/")  # wall clock, process memory and its collector differ run to run
    for key, value in a[3].items():
        if not key.startswith(skip):
            assert b[3][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_refuses_to_overwrite_or_mix_runs(tmp_path):
    cfg = base_cfg(tmp_path, steps=1)
    train(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)
    other = copy.deepcopy(cfg)
    other["resume"] = True
    other["erl"]["tau"] = 0.5
    with pytest.raises(ConfigError, match="erl.tau"):
        train(other)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    cfg = base_cfg(tmp_path, steps=1)
    train(cfg)
    ckpt = Path(cfg["trainer"]["output_dir"]) / "checkpoints" / "step_1"
    (ckpt / "model.safetensors").write_bytes(b"not a checkpoint")
    resumed = dict(cfg, resume=str(ckpt))
    resumed["trainer"] = dict(cfg["trainer"], total_steps=2)
    with pytest.raises(CheckpointError, match="corrupt"):
        train(resumed)


def test_checkpoint_missing_a_trainable_tensor_is_refused(tmp_path):
    cfg = base_cfg(tmp_path, steps=1)
    train(cfg)
    run = Path(cfg["trainer"]["output_dir"])
    with pytest.raises(CheckpointError, match=r"is a run's folder, not a checkpoint; checkpoints in .*: step_1$"):
        load_checkpoint(run, training=False)  # erl-eval eval.checkpoint=<the run> had said "missing model.safetensors"
    ckpt = load_checkpoint(run / "checkpoints" / "step_1")
    trainer, _ = build(cfg)
    trainer.load_state(ckpt)  # the whole checkpoint loads
    dropped = "model.layers.0.self_attn.q_proj.weight"  # trained (not tied to another tensor)
    assert dict(trainer.model.named_parameters())[dropped].requires_grad
    del ckpt["model"][dropped]  # gone from the checkpoint: it would keep its fresh value
    with pytest.raises(CheckpointError, match="parameters it lacks") as err:
        trainer.load_state(ckpt)
    assert dropped in str(err.value)
    ckpt["model"]["not.a.parameter"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="not.a.parameter"):
        trainer.load_state(ckpt)


@pytest.mark.parametrize("section,key,value,match", [
    ("erl", "mode", "grpo", "erl.mode"),
    ("erl", "n_attempt", 0, "erl.n_attempt"),
    ("trainer", "micro_batch_size", 0, "trainer.micro_batch_size"),
    ("trainer", "clip_ratio_c", 1.0, "trainer.clip_ratio_c"),
    ("trainer", "loss_agg_mode", "token-sum", "trainer.loss_agg_mode must be one of .*seq-mean-token-sum"),
    ("trainer", "kl_kind", "full", "trainer.kl_kind"),
    ("trainer", "entropy_coeff", "high", "trainer.entropy_coeff"),
    ("trainer", "bogus", 1, "bogus"),
    ("env", "name", "chess", "unknown environment"),
    ("model", "path", "no-such-model", "model.path"),
])
def test_bad_config_fails_before_any_work(tmp_path, section, key, value, match):
    cfg = base_cfg(tmp_path)
    cfg[section][key] = value
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not (tmp_path / "erl" / "metrics.jsonl").exists()


@pytest.mark.parametrize("env", ["frozenlake", "sokoban", "hotpotqa"])
def test_shipped_hydra_config_composes_and_trains(tmp_path, env):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from erl.cli.train import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("train", overrides=[
            f"env={env}", "model=tiny", "model.tiny.hidden=32", "model.tiny.layers=1", "model.tiny.heads=2",
            "trainer.total_steps=1", "trainer.tasks_per_step=2", "trainer.eval_tasks=2", "env.n_train=4", "env.n_val=2",
            "erl.n_attempt=2", "erl.max_turns=2", "erl.max_new_tokens=8", "erl.max_reflection_tokens=8",
            f"trainer.output_dir={tmp_path / env}", "trainer.loggers=[console]", "trainer.progress=false",
            *(["env.params.max_moves=2"] if env == "sokoban" else [])])
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["env"]["params"]["max_turns"] == 2  # follows erl.max_turns
    last = train(plain)
    assert "eval/success" in last and (tmp_path / env / "checkpoints" / "step_1").is_dir()


def test_erl_eval_on_a_checkpoint_with_and_without_reflection(tmp_path):
    from erl.cli.evaluate import evaluate

    cfg = base_cfg(tmp_path, steps=1)
    train(cfg)
    ckpt = Path(cfg["trainer"]["output_dir"]) / "checkpoints" / "step_1"
    ev = {**base_cfg(tmp_path / "other"), "env": {"name": "sokoban"}}  # the checkpoint's env wins
    plain = evaluate({**ev, "eval": {"checkpoint": str(ckpt), "n": 3, "split": "val"}})
    assert plain["eval/tasks"] == 3 and 0.0 <= plain["eval/success"] <= 1.0 and "eval/turns" in plain
    refl = evaluate({**ev, "eval": {"checkpoint": str(ckpt), "n": 3, "with_reflection": True}})
    # greedy decoding: the first attempts are the same, a reflection can only add successes
    assert refl["eval/success"] == plain["eval/success"]
    assert refl["eval/success_after_reflection"] >= refl["eval/success"]
    assert refl["eval/reflection_rate"] == pytest.approx(1.0 - refl["eval/success"])
    assert refl["time/eval"] > 0 and plain["time/eval"] > 0  # both kinds of eval say how long they took


def test_reference_model_kl_enters_the_loss(tmp_path):
    from erl.core.samples import episode_to_samples
    from erl.trainers.local.run import build

    trainer, _ = build(base_cfg(tmp_path, kl_coef=0.1, kl_kind="k2"))
    rows = [r for ep in trainer.collect(trainer.next_tasks()) for r in episode_to_samples(ep)]
    # the policy equals its reference: k2 = (log pi - log ref)^2 / 2 = 0 on every token
    assert trainer.update(rows)["loss/kl"] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():  # move the policy away from the frozen reference
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert trainer.update(rows)["loss/kl"] > 1e-4
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())


def test_entropy_bonus_enters_the_loss(tmp_path):
    from erl.core.samples import episode_to_samples

    trainer, _ = build(base_cfg(tmp_path, entropy_coeff=0.1))
    rows = [r for ep in trainer.collect(trainer.next_tasks()) for r in episode_to_samples(ep)]
    for mode in ("token-mean", "seq-mean-token-sum"):
        trainer.loss = dataclasses.replace(trainer.loss, loss_agg_mode=mode)  # the validated settings the loss reads
        m = trainer.update(rows)
        # every term is a weighted mean over micro-batches, so the sum holds for the step's metrics too
        expected = m["loss/pg_loss"] + m.get("loss/distill_nll", 0.0) - 0.1 * m["loss/entropy"]
        assert m["loss/total"] == pytest.approx(expected, abs=1e-5), mode
        if mode == "token-mean":  # a tiny random model: per-token entropy well above 0, at most ln V
            token_mean = m["loss/entropy"]
            assert 0.1 < token_mean <= math.log(trainer.model.config.vocab_size)
    assert m["loss/entropy"] > token_mean  # seq-mean-token-sum: a row's entropies add up
    trainer.loss = dataclasses.replace(trainer.loss, entropy_coeff=0.0)
    assert "loss/entropy" not in trainer.update(rows)  # not computed when it is not used


def test_erl_compare_runs_every_mode_and_writes_plot_and_table(tmp_path):
    from erl.cli.compare import main as compare_main

    overrides = ["model=tiny", "model.tiny.hidden=32", "model.tiny.layers=1", "model.tiny.heads=2",
                 "trainer.total_steps=1", "trainer.tasks_per_step=1", "trainer.eval_tasks=2", "env.n_train=2",
                 "env.n_val=2", "erl.n_attempt=2", "erl.max_turns=2", "erl.max_new_tokens=4",
                 "erl.max_reflection_tokens=4", "trainer.loggers=[console]", "trainer.progress=false"]
    assert compare_main(["--out", str(tmp_path), "--modes", "erl", "rlvr", "--", *overrides]) == 0
    table = (tmp_path / "results.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == ["erl", "rlvr"]
    results = json.loads((tmp_path / "results.json").read_text())
    # compute matching: erl runs n = 2 first attempts per task (+ second attempts), rlvr 2n = 4
    assert results[1]["rollouts_per_step"] == 4.0 and results[0]["rollouts_per_step"] >= 2.0
    assert (tmp_path / "compare.png").stat().st_size > 1000
    assert compare_main(["--out", str(tmp_path / "bad"), "--", "erl.tau=high"]) == 2


def test_erl_compare_refuses_a_misspelt_key_or_group_in_one_line(tmp_path, capsys):
    """erl-compare ends on a bad override before any mode runs, as erl-train does: a misspelt key with
    the closest known one, a group option that does not exist with Hydra's list of options."""
    from erl.cli.compare import main as compare_main

    assert compare_main(["--out", str(tmp_path), "--", "model=tiny", "trainer.stepz=2"]) == 2
    assert "erl-compare: error: unknown config key 'trainer.stepz'; did you mean trainer.total_steps?" in capsys.readouterr().err
    assert compare_main(["--out", str(tmp_path), "--", "model=tiny", "env=sokobn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("erl-compare: error:") and "env/sokobn" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_micro_batching_gives_the_full_batch_gradient(tmp_path):
    """Token-mean over the whole step, whatever the micro-batch size: with the same rows and
    weights, one update with micro-batches of 1 lands where one full batch does."""
    from erl.core.samples import episode_to_samples
    from erl.trainers.local.run import build

    def trainer_with(micro: int, tokens: int = 0):
        cfg = base_cfg(tmp_path / f"{micro}-{tokens}", micro_batch_size=micro, micro_batch_tokens=tokens,
                       grad_clip=0.0)
        return build(cfg)[0]

    small, full, budget = trainer_with(1), trainer_with(64), trainer_with(64, tokens=60)
    rows = [r for ep in small.collect(small.next_tasks()) for r in episode_to_samples(ep)]
    for i, r in enumerate(rows):  # rewards that differ within every group: non-zero advantages
        r.reward = float(i % 2)
    grads = []
    for t in (small, full, budget):
        t.optimizer.step = lambda: None  # keep the accumulated gradient instead of applying it
        t.update(rows)
        grads.append(torch.cat([p.grad.flatten() for p in t.model.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    assert torch.allclose(grads[2], grads[1], rtol=1e-4, atol=1e-7)  # a token budget: other chunks, same sum


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_update_reports_the_rollouts_logprob_gap(tmp_path):
    """rollout/logprob_gap_*: |training log-prob - rollout log-prob| over the trained tokens of
    policy-gradient rows. fp32 on CPU: the rollout's own log-probs, so ~0; every rollout
    log-prob moved by 0.25: a gap of 0.25, mean and max."""
    from erl.core.samples import episode_to_samples
    from erl.trainers.local.run import build

    trainer = build(base_cfg(tmp_path, "rlvr"))[0]
    trainer.optimizer.step = lambda: None  # the same weights for both updates
    rows = [r for ep in trainer.collect(trainer.next_tasks()) for r in episode_to_samples(ep)]
    for i, r in enumerate(rows):  # rewards that differ within every group: no row left out as idle
        r.reward = float(i % 2)
    m = trainer.update(rows)
    assert m["rollout/logprob_gap_max"] < 1e-4 and m["rollout/logprob_gap_mean"] < 1e-4
    for r in rows:
        r.logprobs = [lp + 0.25 if on else lp for lp, on in zip(r.logprobs, r.response_mask)]
    m = trainer.update(rows)
    assert m["rollout/logprob_gap_mean"] == pytest.approx(0.25, abs=1e-4)
    assert m["rollout/logprob_gap_max"] == pytest.approx(0.25, abs=1e-4)


def test_micro_batches_hold_at_most_their_rows_and_padded_tokens():
    from erl.core.types import Segment, TokenSample
    from erl.trainers.local.batch import micro_batch_indices

    def row(p: int, r: int) -> TokenSample:
        return TokenSample(prompt_ids=[1] * p, response_ids=[2] * r, response_mask=[1] * r, logprobs=[0.0] * r,
                           segment=Segment.ATTEMPT1, reward=0.0)

    rows = [row(5, 5), row(2, 2), row(3, 9), row(8, 1), row(2, 3)]  # totals 10, 4, 12, 9, 5
    # by length: 1 (4), 4 (5), 3 (9), 0 (10), 2 (12); rows only: 2 a chunk
    assert micro_batch_indices(rows, 2) == [[1, 4], [3, 0], [2]]
    # a micro-batch pads to its longest row (right-padded rows): 20 padded tokens: [1, 4] is 2 x 5 = 10;
    # + row 3 -> 3 x 9 = 27 > 20; [3, 0] is 2 x 10 = 20; + row 2 -> 3 x 12 = 36 > 20
    assert micro_batch_indices(rows, 8, max_tokens=20) == [[1, 4], [3, 0], [2]]
    assert micro_batch_indices(rows, 8, max_tokens=27) == [[1, 4, 3], [0, 2]]  # 27; then 2 x 12 = 24
    assert micro_batch_indices(rows, 8, max_tokens=26) == [[1, 4], [3, 0], [2]]  # 3 x 9 = 27 > 26, 3 x 12 > 26
    assert micro_batch_indices(rows, 8, max_tokens=3) == [[1], [4], [3], [0], [2]]  # too long: alone
    # kind 0: rows 0 (10) and 2 (12): 2 x 12 = 24; kind 1: 1 (4), 4 (5), 3 (9): 3 x 9 = 27 > 24
    assert micro_batch_indices(rows, 8, kinds=[0, 1, 0, 1, 1], max_tokens=24) == [[0, 2], [1, 4], [3]]


def test_erl_eval_command_prints_a_table_and_writes_json(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-c", "from erl.cli.evaluate import main; main()", "model=tiny", "model.tiny.hidden=32",
         "model.tiny.layers=1", "model.tiny.heads=2", "eval.n=2", "erl.max_turns=2", "erl.max_new_tokens=4",
         f"eval.out={out}", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "eval/success" in proc.stdout
    saved = json.loads(out.read_text())
    assert saved["metrics"]["eval/tasks"] == 2.0 and saved["config"]["model"]["path"] == "tiny"
    bad = subprocess.run([sys.executable, "-c", "from erl.cli.evaluate import main; main()", "model.path=nowhere",
                          f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "model.path" in bad.stderr


def test_erl_eval_of_a_checkpoint_records_its_settings_and_refuses_overrides_it_would_drop(tmp_path):
    """With eval.checkpoint, eval.out records the checkpoint's model (here tiny, 1 layer), not the
    command line's defaults (smollm2), and the tasks logged are the task file's env; an `env=` (or
    `model.`, `erl.`, `seed=`) override, which the checkpoint's settings replace, is refused."""
    import subprocess
    import sys

    from erl.cli.evaluate import ignored_overrides
    from erl.envs.base import write_tasks
    from erl.envs.registry import make_tasks

    assert ignored_overrides(["env=sokoban", "eval.n=2", "+model.tiny.x=1", "erl.tau=0.5", "seed=3", "trainer.lr=1"]) \
        == ["env=sokoban", "+model.tiny.x=1", "erl.tau=0.5", "seed=3"]
    cfg = base_cfg(tmp_path, steps=1)
    train(cfg)
    ckpt = Path(cfg["trainer"]["output_dir"]) / "checkpoints" / "step_1"
    tasks = tmp_path / "sokoban.jsonl"
    write_tasks(tasks, make_tasks("sokoban", 2, seed=0, split="val", max_moves=2, max_turns=2))
    cmd = [sys.executable, "-c", "from erl.cli.evaluate import main; main()", f"eval.checkpoint={ckpt}",
           f"hydra.run.dir={tmp_path}"]
    out = tmp_path / "eval.json"
    ok = subprocess.run([*cmd, f"eval.tasks_file={tasks}", f"eval.out={out}"], capture_output=True, text=True,
                        timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "2 sokoban tasks" in ok.stderr
    saved = json.loads(out.read_text())["config"]
    assert saved["model"]["path"] == "tiny" and saved["model"]["tiny"]["layers"] == 1
    assert saved["env"]["name"] == "frozenlake" and saved["eval"]["checkpoint"] == str(ckpt)
    bad = subprocess.run([*cmd, "env=sokoban"], capture_output=True, text=True, timeout=300, check=False)
    want = ("erl-eval: error: env=sokoban: with eval.checkpoint the run's own model, erl, env and seed are used (its "
            "config.json); to score other tasks pass eval.tasks_file=...")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [want]


def test_auto_precision_is_bf16_on_cuda_and_amx_cpus_only(monkeypatch):
    from erl.trainers.local import trainer as local

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert local.resolve_precision("fp32", cuda) == "fp32" and local.resolve_precision("bf16", cpu) == "bf16"
    assert local.resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(local, "cpu_has_amx", lambda: False)  # AVX512-BF16 without AMX: bf16 is slower
    assert local.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(local, "cpu_has_amx", lambda: True)
    assert local.resolve_precision("auto", cpu) == ("bf16" if torch.backends.mkldnn.is_available() else "fp32")


@pytest.mark.parametrize("distill_mode", ["sft", "raft"])
def test_rows_without_gradient_skip_their_passes_with_the_same_update(tmp_path, monkeypatch, distill_mode):
    """A tied GRPO group has advantage exactly 0: its rows' loss and gradient are exactly 0, so
    the update skips their forward and backward passes. Weights, Adam state and metrics must equal
    an update that runs them, also on a step where every row is idle (Adam's momentum still acts)."""
    from erl.core.losses import LossSettings
    from erl.core.samples import episode_to_samples
    from erl.core.types import SEGMENT_IDS

    def trainer():
        t = build(base_cfg(tmp_path / f"{distill_mode}{len(list(tmp_path.iterdir()))}"))[0]
        t.loss = dataclasses.replace(t.loss, distill_mode=distill_mode)
        return t

    fast, slow = trainer(), trainer()
    rows = [r for ep in fast.collect(fast.next_tasks()) for r in episode_to_samples(ep)]
    rows += [dataclasses.replace(rows[0], segment=Segment.DISTILL, reward=1.0)]
    for i, r in enumerate(rows):  # task 0's groups tie (idle), task 1's alternate (a gradient)
        r.reward = 0.0 if r.task_id == rows[0].task_id and r.segment != Segment.DISTILL else float(i % 2)
    tied = [dataclasses.replace(r, reward=0.0) for r in rows if r.segment != Segment.DISTILL]
    adv = fast.advantages(rows)
    idle = fast.loss.idle_rows(adv, torch.tensor([SEGMENT_IDS[s.segment] for s in rows]))
    assert 0 < int(idle.sum()) < len(rows) and not bool(idle[-1] and distill_mode == "sft")

    forwards = {"fast": 0}
    real = fast._logprobs

    def counted(*a, **k):
        forwards["fast"] += 1
        return real(*a, **k)

    monkeypatch.setattr(fast, "_logprobs", counted)
    metrics = [fast.update(rows), fast.update(tied)]
    monkeypatch.setattr(LossSettings, "idle_rows", lambda self, a, s: torch.zeros(len(a), dtype=torch.bool))
    expected = [slow.update(rows), slow.update(tied)]
    # the rollout's log-prob gap is measured on the rows the update runs: not on skipped ones
    gap = ("rollout/logprob_gap_mean", "rollout/logprob_gap_max")
    assert set(gap) <= metrics[0].keys() and not set(gap) & metrics[1].keys() and set(gap) <= expected[1].keys()
    for got, want in zip(metrics, expected):
        assert got.keys() - set(gap) == want.keys() - set(gap)
        for k in want:
            if not k.startswith(("train/idle", "rollout/logprob_gap", "train/micro_batches")):
                assert got[k] == pytest.approx(want[k], abs=1e-6), k
    assert metrics[0]["train/idle_rows"] == int(idle.sum()) and expected[0]["train/idle_rows"] == 0
    assert metrics[1]["train/idle_rows"] == len(tied)  # nothing to learn from: no pass at all
    assert metrics[0]["train/idle_tokens"] == sum(len(r.prompt_ids) + len(r.response_ids)
                                                  for r, i in zip(rows, idle) if i)
    for a, b in zip(fast.model.parameters(), slow.model.parameters()):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()  # lr 1e-3; float noise of the sums' order
    assert any(not torch.equal(a, b) for a, b in zip(fast.model.parameters(), build(base_cfg(tmp_path / "init"))[0].model.parameters()))
    busy = math.ceil((len(rows) - int(idle.sum())) / fast.cfg.micro_batch_size)
    assert forwards["fast"] <= busy + 1  # + 1: distillation rows keep a micro-batch of their own
    assert metrics[0]["train/micro_batches"] == forwards["fast"] > 0 and metrics[1]["train/micro_batches"] == 0
    assert expected[0]["train/micro_batches"] > metrics[0]["train/micro_batches"]


def test_step_benchmark_side_by_side(tmp_path, capsys):
    """benchmarks/local_step.py, the twin of verl_step.py: ERL and compute-matched RLVR steps
    alternate; RLVR runs 2n first attempts a task, ERL n first attempts plus reflections and
    second attempts; the report prints only the times this trainer has."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "local_step.py"
    spec = importlib.util.spec_from_file_location("local_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    sets = ["model=tiny", "model.tiny.hidden=32", "model.tiny.layers=1", "model.tiny.heads=2", "env.n_train=8",
            "trainer.tasks_per_step=2", "erl.n_attempt=2", "erl.max_new_tokens=8", "erl.max_reflection_tokens=8"]
    out = tmp_path / "r.json"
    assert bench.main([*[a for s in sets for a in ("--set", s)], "--warmup", "0", "--steps", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["rlvr"]["rows"] == 2 * 4 and res["erl"]["rows"] > 8 and res["erl"]["time/reflection"] > 0
    assert res["ratio/step_time"] == pytest.approx(res["erl"]["time/step"] / res["rlvr"]["time/step"])
    for k in ("time/step", "time/rollout", "time/update"):  # ERL's time beyond 1.5x RLVR's, by phase
        assert res["excess"][k] == pytest.approx(res["erl"][k] - 1.5 * res["rlvr"][k])
    assert len(res["ratio/pairs"]) == 1 and res["ratio/pairs"][0] == pytest.approx(res["ratio/step_time"])
    # the one measured step, whole: its median is itself, and ERL's row has the memory's size
    assert res["per_step"]["erl"][0]["time/step"] == pytest.approx(res["erl"]["time/step"])
    assert "memory/size" in res["per_step"]["erl"][0] and "memory/size" not in res["per_step"]["rlvr"][0]
    for r in (res["erl"], res["rlvr"]):  # the engine's split of its own time, inside the rollout's
        assert r["rollout/prefill_forwards"] >= 1 and r["rollout/decode_steps"] >= 1
        assert 0 < r["time/rollout_prefill"] + r["time/rollout_decode"] <= r["time/rollout_engine"] <= r["time/rollout"]
        assert r["time/rollout_gpu_wait"] == 0  # on CPU the forward runs in the host thread: nothing to wait for
    text = capsys.readouterr().out
    assert f"ERL / RLVR step by step: {res['ratio/pairs'][0]:.3f}" in text
    assert f"ERL - 1.5 x RLVR: step {res['excess']['time/step']:+.3f} s" in text
    assert "ERL / RLVR step time" in text and "old_log_prob" not in text and "RLVR 4 first attempts a task" in text


def test_step_benchmark_pairs_each_erl_step_with_the_rlvr_step_after_it():
    """The per-pair ratios beside the ratio of medians, worked out by hand with scripted step times:
    ERL 9 (warm-up), 4, 5, 6 s and RLVR 9, 2, 2.5, 4 s give pairs 2, 2, 1.5 and medians 5 / 2.5."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "verl_step.py"
    spec = importlib.util.spec_from_file_location("verl_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    class Scripted:
        def __init__(self, times):
            self.times = iter(times)

        def step(self):
            t = next(self.times)
            return {"time/step": t, "time/rollout": t / 2, "time/update": t / 4}

    res = bench.side_by_side(Scripted([9, 4, 5, 6]), Scripted([9, 2, 2.5, 4]), warmup=1, steps=3)
    assert res["ratio/pairs"] == pytest.approx([2.0, 2.0, 1.5])
    assert res["ratio/step_time"] == pytest.approx(2.0) and res["excess"]["time/step"] == pytest.approx(5 - 3.75)
    assert "ERL / RLVR step by step: 2.000, 2.000, 1.500" in bench.report(res)
    # one line a measured step, the warm-up left out: ERL step, rollout, update, then RLVR's, then the ratio
    lines = bench.report(res).splitlines()
    head = lines.index(next(ln for ln in lines if ln.startswith("per step:")))
    assert lines[head].split() == ["per", "step:", "ERL", "step", "ERL", "rollout", "ERL", "update",
                                   "RLVR", "step", "RLVR", "rollout", "RLVR", "update", "ratio"]
    assert [float(x) for x in lines[head + 3].split()[1:]] == [6.0, 3.0, 1.5, 4.0, 2.0, 1.0, 1.5]
    assert lines[head + 4].startswith("ERL - 1.5 x RLVR")


def test_a_rollout_leaves_the_objects_alive_before_it_out_of_full_collections():
    """frozen_heap: what was alive before (the trainer's model, tasks, memory) is frozen for the
    rollout, new objects are still collected, and everything rejoins the collector after it,
    also when the rollout fails."""
    import gc

    from erl.trainers.heap import frozen_heap

    assert gc.get_freeze_count() == 0
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        cycle = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # a cycle made during the rollout is still freed
        # ... and the frozen stay frozen; one may still die by reference count when its last
        # reference goes (a finalizer, another thread: CI saw 2 of 964,519 go during this collect)
        assert frozen - 100 < gc.get_freeze_count() <= frozen
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("episode failed")
    assert gc.get_freeze_count() == 0


def test_a_training_loop_settles_its_heap_after_each_step():
    """settled_heap: settle() collects what is not frozen and freezes the survivors (metrics say
    how long and how many are frozen); a rollout inside leaves the frozen heap frozen, a cycle made
    after a settling is still freed by the next, and the loop's end (also by an error) thaws it all."""
    import gc

    from erl.trainers.heap import frozen_heap, settled_heap

    assert gc.get_freeze_count() == 0
    with settled_heap() as heap:
        assert gc.get_freeze_count() == 0  # not before the first step
        done = heap.settle()
        assert set(done) == {"perf/gc_settle_seconds", "perf/gc_frozen_objects"} and done["perf/gc_settle_seconds"] > 0
        # a frozen object may still die (one another thread held: a server a test left running), none joins
        # without a freeze: the count can only fall between a settle and a look at it
        frozen = gc.get_freeze_count()
        assert 0 < frozen <= done["perf/gc_frozen_objects"]
        with frozen_heap():
            assert 0 < gc.get_freeze_count() <= frozen  # neither thawed nor frozen again
            survivor, cycle = [], []
            cycle.append(cycle)
            del cycle
        again = heap.settle()  # the cycle freed, the survivor (and the settle's own records) frozen
        assert frozen < again["perf/gc_frozen_objects"] < frozen + 100 and gc.get_freeze_count() <= again["perf/gc_frozen_objects"]
        assert not any(o is survivor for o in gc.get_objects())  # frozen: out of every generation's passes
    assert gc.get_freeze_count() == 0
    loop = types.SimpleNamespace(heap=None)  # a driver, whose steps settle the heap it is given
    with pytest.raises(RuntimeError), settled_heap(loop) as heap:
        assert loop.heap is heap
        heap.settle()
        raise RuntimeError("step failed")
    assert gc.get_freeze_count() == 0 and loop.heap is None  # taken back by the error's exit too
    assert heap.settle() == {} and gc.get_freeze_count() == 0  # a step after its loop ended leaves it alone


def test_fit_settles_the_heap_after_every_step(tmp_path):
    """The local trainer's loop settles after each step, reports it with the step, and thaws at its end."""
    import gc

    train(base_cfg(tmp_path, "rlvr", steps=2))
    rows = read_metrics(tmp_path / "rlvr" / "metrics.jsonl")
    frozen = [r["perf/gc_frozen_objects"] for r in rows[1:]]
    assert len(frozen) == 2 and 0 < frozen[0] and all("perf/gc_settle_seconds" in r for r in rows[1:])
    # inside the step's time: what a step costs includes the passes it made necessary
    assert all(r["time/step"] >= r["time/update"] + r["perf/gc_settle_seconds"] for r in rows[1:])
    assert gc.get_freeze_count() == 0


def test_full_garbage_collections_are_counted_with_their_seconds():
    """erl.trainers.heap.FullPasses counts generation-2 passes only, once each however often it is
    installed, and times them from start to stop."""
    import gc

    from erl.trainers.heap import FullPasses

    passes = FullPasses.install()
    assert FullPasses.install() is passes and gc.callbacks.count(passes) == 1
    n, secs = passes.totals()
    gc.collect(0)
    gc.collect(1)
    assert passes.totals() == (n, secs)
    gc.collect()
    gc.collect(2)
    assert passes.passes == n + 2 and passes.seconds > secs
    counter = FullPasses()  # by hand: a start at t and a stop give the time between them
    counter("start", {"generation": 2})
    counter("stop", {"generation": 1})  # another generation's stop is not this pass's
    assert counter.totals() == (0, 0.0)
    counter("stop", {"generation": 2})
    counter("stop", {"generation": 2})  # a stop without a start counts nothing
    assert counter.passes == 1 and 0 <= counter.seconds < 1


def test_lora_adapters_start_from_the_seed_whatever_loading_drew(monkeypatch):
    """A first run converts the registry model inside the process, which draws from torch's global
    generator; later runs load the cached folder and draw nothing. Both must start training from
    the same adapters (the README command's first update had differed, 0.0280 against 0.0258)."""
    from erl.models import tiny
    from erl.trainers.local.run import load_policy_model

    build = tiny.build_tiny_model

    def drawing(draws):
        def build_and_draw(*args, **kwargs):
            model = build(*args, **kwargs)
            torch.rand(draws)  # what a conversion's random init would take
            return model
        return build_and_draw

    cfg = {"path": "tiny", "lora": {"enabled": True, "r": 4, "alpha": 8}}
    adapters = []
    for draws in (0, 1000):
        monkeypatch.setattr(tiny, "build_tiny_model", drawing(draws))
        model, _ = load_policy_model(cfg, torch.device("cpu"), seed=3)
        adapters.append({k: v.clone() for k, v in model.state_dict().items() if "lora_A" in k})
    assert adapters[0] and adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


def test_wandb_without_credentials_is_refused_before_the_run(tmp_path, monkeypatch):
    """trainer.loggers=[wandb] with no login had stopped at wandb.init's UsageError after the run's folder
    was written; now the config check names what to do, and a key, a login in ~/.netrc or a local mode pass."""
    from erl.core.config import ConfigError
    from erl.trainers.local.config import LocalTrainerConfig, wandb_problem

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = base_cfg(tmp_path)
    cfg["trainer"]["loggers"] = ["console", "wandb"]
    with pytest.raises(ConfigError, match="trainer.loggers: wandb has no credentials: run `wandb login`"):
        train(cfg)
    assert not Path(cfg["trainer"]["output_dir"]).exists()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    assert wandb_problem() is None
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert LocalTrainerConfig.from_dict({"loggers": ["wandb"]}).loggers == ["wandb"]
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert wandb_problem() == "is not installed: pip install 'erl[wandb]'"
