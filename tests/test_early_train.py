"""Early Experience stages on the local trainer (tiny model): the loss, chaining, resume, LoRA,
warm start of the RL trainer, the CLI, and the verl SFT dataset on the same files."""

import asyncio
import copy
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from erl.core.config import ConfigError
from erl.early.build import BuildConfig, build_records
from erl.early.data import record_sample, write_dataset
from erl.early.train import EarlyTrainConfig, StageTrainer, train
from erl.envs.base import ACTIONS
from erl.models.chat import ChatTokenizer
from erl.models.tiny import build_tiny_model, build_tiny_tokenizer
from erl.rollout.scripted import ScriptedPolicy
from erl.trainers.local.checkpoint import CheckpointError
from erl.trainers.local.run import build as build_rl
from erl.trainers.local.run import load_policy_model
from erl.trainers.local.run import train as train_rl

ROOT = Path(__file__).resolve().parents[1]
TINY = {"path": "tiny", "tiny": {"hidden": 32, "layers": 1, "heads": 2}}
TASKS = [{"task_id": "hand", "env": "frozenlake", "grid": ["SF", "HG"], "max_turns": 4},
         {"task_id": "hand2", "env": "frozenlake", "grid": ["SFF", "HHG", "FFF"], "max_turns": 4}]


def stage(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "early" / "stage" / f"{name}.yaml").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    tok = build_tiny_tokenizer()
    policy = ScriptedPolicy(tok, lambda prompt, i: f"Rationale {i}: the J cell is where to go."
                            if "two possible actions" in prompt else ACTIONS[i % 4])
    out, stats = asyncio.run(build_records(TASKS, policy, BuildConfig(k=2, max_rounds=1)))
    return write_dataset(tmp_path_factory.mktemp("early") / "data", out, {"counts": stats})


def stage_cfg(data: Path, name: str, out: Path, model: dict | None = None, **trainer) -> dict:
    return {"stage": stage(name), "data": str(data), "seed": 0, "resume": False, "model": copy.deepcopy(model or TINY),
            "trainer": {"epochs": 2, "batch_size": 3, "micro_batch_size": 2, "lr": 1e-2, "output_dir": str(out),
                        "loggers": ["console"], "progress": False, "precision": "fp32", "device": "cpu", **trainer}}


def final_weights(out: Path) -> dict:
    return load_file(str(out / "final" / "model.safetensors"))


def test_stage_loss_is_the_token_mean_nll_of_the_targets_only(data):
    tok = build_tiny_tokenizer()
    chat = ChatTokenizer(tok)
    records = [json.loads(line) for line in (data / "sr.jsonl").read_text().splitlines()[:2]]
    rows = [record_sample(r["messages"], chat) for r in records]
    model = build_tiny_model(tok, hidden=32, layers=1, heads=2)
    expected_sum, n = 0.0, 0
    with torch.no_grad():  # by hand: one row at a time, no padding, log p of each target token
        for row in rows:
            ids = torch.tensor([row.prompt_ids + row.response_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            targets = ids[0, 1:]
            lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[-len(row.response_ids):]
            expected_sum, n = expected_sum + float(lp.sum()), n + len(row.response_ids)
    cfg = EarlyTrainConfig(batch_size=2, micro_batch_size=1, lr=1e-3, loggers=["console"], precision="fp32")
    trainer = StageTrainer(model, tok, rows, cfg, seed=0)
    metrics = trainer.step()  # two micro-batches of different lengths, weighted into one token mean
    assert metrics["tokens/trained"] == n
    assert metrics["loss/nll"] == pytest.approx(-expected_sum / n, rel=1e-5)


def test_iwm_then_il_from_its_checkpoint(data, tmp_path):
    iwm = tmp_path / "iwm"
    train(stage_cfg(data, "iwm", iwm))
    meta = json.loads((iwm / "final" / "early.json").read_text())
    assert meta["stage"] == "iwm" and meta["steps"] == 2 * 4  # 5 states x 2 = 10 iwm records, 3 a batch: 4 steps
    loaded, _ = load_policy_model({**TINY, "init_from": str(iwm)}, torch.device("cpu"), seed=0)
    saved = final_weights(iwm)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())
    fresh, _ = load_policy_model(TINY, torch.device("cpu"), seed=0)
    assert not torch.equal(fresh.state_dict()["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])
    il = tmp_path / "iwm-il"
    first = train(stage_cfg(data, "il", il, {**TINY, "init_from": str(iwm)}, total_steps=1))
    scratch = train(stage_cfg(data, "il", tmp_path / "il", total_steps=1))
    assert first["loss/nll"] != pytest.approx(scratch["loss/nll"], rel=1e-4)  # it started elsewhere
    assert not torch.equal(final_weights(il)["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])


def test_resume_gives_the_uninterrupted_result_and_refuses_changed_data(data, tmp_path):
    straight = tmp_path / "straight"
    train(stage_cfg(data, "sr", straight, total_steps=4))
    parts = tmp_path / "parts"
    train(stage_cfg(data, "sr", parts, total_steps=2))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(stage_cfg(data, "sr", parts, total_steps=4))
    cfg = stage_cfg(data, "sr", parts, total_steps=4)
    cfg["resume"] = True
    resumed = train(cfg)
    assert train(cfg)["loss/nll"] == resumed["loss/nll"]  # resumed at its end: step 4's line, not nan
    a, b = final_weights(straight), final_weights(parts)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    rows = [json.loads(x) for x in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in ("sr.jsonl", "expert.jsonl"):
        (changed / f).write_text((data / f).read_text())
    train(stage_cfg(changed, "sr", tmp_path / "c", total_steps=1))
    (changed / "expert.jsonl").write_text((data / "expert.jsonl").read_text().splitlines()[0] + "\n")
    cfg = stage_cfg(changed, "sr", tmp_path / "c", total_steps=2)
    cfg["resume"] = True
    with pytest.raises(ConfigError, match="data_sha256"):
        train(cfg)


def test_lora_stage_is_merged_into_plain_weights(data, tmp_path):
    lora = {**TINY, "lora": {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
    out = tmp_path / "lora"
    train(stage_cfg(data, "il", out, lora, total_steps=2))
    base, _ = load_policy_model(TINY, torch.device("cpu"), seed=0)
    warm, _ = load_policy_model({**TINY, "init_from": str(out)}, torch.device("cpu"), seed=0)  # no adapters
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base.state_dict()[q], warm.state_dict()[q])  # the adapters' update is in it
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(base.state_dict()[k], warm.state_dict()[k])  # no adapter there: untouched


def rl_cfg(tmp_path: Path, init_from: str, tiny: dict | None = None) -> dict:
    return {
        "seed": 0, "resume": False,
        "erl": {"mode": "erl", "n_attempt": 2, "max_turns": 3, "max_new_tokens": 8, "max_reflection_tokens": 8,
                "reflection_require_tag": False, "temperature": 1.0},
        "trainer": {"total_steps": 1, "tasks_per_step": 1, "lr": 1e-3, "micro_batch_size": 4, "eval_every": 1,
                    "eval_tasks": 1, "save_every": 1, "output_dir": str(tmp_path / "rl"), "loggers": ["console"],
                    "progress": False, "precision": "fp32", "max_context_tokens": 1024},
        "env": {"name": "frozenlake", "n_train": 2, "n_val": 1, "params": {"size_min": 2, "size_max": 2}},
        "model": {"path": "tiny", "tiny": tiny or TINY["tiny"], "init_from": init_from},
    }


def test_warm_start_of_the_local_rl_trainer(data, tmp_path):
    sr = tmp_path / "sr"
    train(stage_cfg(data, "sr", sr, total_steps=1))
    trainer, _ = build_rl(rl_cfg(tmp_path, str(sr)))
    saved = final_weights(sr)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in saved.items())
    train_rl(rl_cfg(tmp_path, str(sr / "final")))  # one ERL step from the warm start, either path form
    assert (tmp_path / "rl" / "checkpoints" / "step_1").is_dir()
    # verl starts from the final/ folder itself (MODEL_PATH=.../final): its pre-Ray model check passes
    from erl.trainers.verl.config import check_model

    assert check_model(str(sr / "final")) == str(sr / "final")
    with pytest.raises(CheckpointError, match="does not fit the model built from model.path"):
        build_rl(rl_cfg(tmp_path / "x", str(sr), {"hidden": 64, "layers": 1, "heads": 2}))
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        build_rl(rl_cfg(tmp_path / "y", str(tmp_path)))


def test_empty_stage_fails_before_the_model_is_built(tmp_path):
    (tmp_path / "iwm.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="hold no records"):
        train(stage_cfg(tmp_path, "iwm", tmp_path / "out", {"path": "no-such-model"}))
    assert not (tmp_path / "out").exists()


def test_cli_build_train_export_and_verl_reads_the_same_targets(tmp_path, capsys, monkeypatch):
    import erl.rollout.build
    from erl.cli.early import main
    from erl.rollout.engine import RolloutEngine

    real, policies = erl.rollout.build.build_policy, []
    monkeypatch.setattr(erl.rollout.build, "build_policy", lambda *a, **kw: policies.append(real(*a, **kw))
                        or policies[-1])
    d = tmp_path / "d"
    tiny = ["model=tiny", "model.tiny.hidden=32", "model.tiny.layers=1", "model.tiny.heads=2"]
    assert main(["build", *tiny, "env.n_train=2", "env.params.size_max=2", f"out={d}", "early.k=2",
                 "early.max_rounds=1", "early.rationale_max_tokens=8", "device=cpu"]) == 0
    # the alternatives come through the RL rollout's own engine (rollout_engine=auto)
    assert len(policies) == 1 and isinstance(policies[0], RolloutEngine) and policies[0].max_slots == 64
    with pytest.raises(SystemExit) as exc:
        main(["build", *tiny, f"out={tmp_path / 'f'}", "rollout_engine=vllm", "device=cpu"])
    assert exc.value.code == 2 and "rollout_engine must be auto, engine or hf" in capsys.readouterr().err
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["counts"]["rows_iwm"] == 2 * manifest["counts"]["expert_states"]
    assert main(["show", str(d), "--kind", "rollout", "--n", "1"]) == 0
    shown = capsys.readouterr().out
    assert '"rows_iwm"' in shown and "expert_action: " in shown and "source: " in shown
    with pytest.raises(SystemExit) as exc:
        main(["build", *tiny, f"out={tmp_path / 'e'}", "early.k=4"])
    assert exc.value.code == 2 and not (tmp_path / "e").exists()
    with pytest.raises(SystemExit) as exc:
        main(["build", *tiny, f"out={d}", "early.k=2"])  # the dataset is never written over
    assert exc.value.code == 2
    assert main(["train", "stage=il", *tiny, f"data={d}", f"trainer.output_dir={tmp_path / 'il'}",
                 "trainer.total_steps=1", "trainer.loggers=[console]", "trainer.progress=false",
                 "trainer.device=cpu"]) == 0
    assert (tmp_path / "il" / "final" / "model.safetensors").is_file()
    # scripts/early_common.sh always passes resume=true: into a fresh folder it is a plain start
    assert main(["train", "stage=il", "resume=true", *tiny, f"data={d}", f"trainer.output_dir={tmp_path / 'il2'}",
                 "trainer.total_steps=1", "trainer.loggers=[console]", "trainer.progress=false",
                 "trainer.device=cpu"]) == 0
    assert (tmp_path / "il2" / "final" / "model.safetensors").is_file()
    assert f"nothing to resume in {tmp_path / 'il2'}: a new run" in capsys.readouterr().err
    assert main(["export", "stage=iwm", f"data={d}"]) == 0
    parquet = d / "verl" / "iwm.parquet"
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    tok = build_tiny_tokenizer()
    ds = MultiTurnSFTDataset(str(parquet), tok, OmegaConf.create({"pad_mode": "no_padding", "max_length": 4096}))
    records = [json.loads(x) for x in (d / "iwm.jsonl").read_text().splitlines()]
    assert len(ds) == len(records)
    for i, record in enumerate(records):
        item = ds[i]
        trained = item["input_ids"][item["loss_mask"].bool()].tolist()
        ours = record_sample(record["messages"], ChatTokenizer(tok))
        # the same target tokens; verl also trains the newline the template writes after <|im_end|>
        assert trained == ours.response_ids + tok.encode("\n", add_special_tokens=False)
        assert item["input_ids"].tolist() == ours.prompt_ids + trained


def dry_run(script: str, *args: str, **env: str) -> list[list[str]]:
    full = {**os.environ, "DRY_RUN": "1", **env}
    out = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], env=full, capture_output=True, text=True,
                         check=True).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def test_verl_sft_launch_uses_verls_entry_point_and_config_keys():
    export, cmd = dry_run("early_sft_verl.sh", "sr", "trainer.save_freq=5", DATA="data/early/x", MODEL_PATH="/m",
                          N_GPUS_PER_NODE="4")
    assert export[export.index("-m") + 1:] == ["erl.cli.early", "export", "stage=sr", "data=data/early/x",
                                                "out=data/early/x/verl/sr.parquet"]
    assert cmd[0] == "torchrun" and "--nproc_per_node=4" in cmd
    assert cmd[cmd.index("-m") + 1] == "verl.trainer.sft_trainer"
    overrides = cmd[cmd.index("-m") + 2:]
    pytest.importorskip("verl")
    import verl
    from hydra import compose, initialize_config_dir

    # every key must exist in verl's own SFT config (a misspelt key fails to compose)
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        c = compose(config_name="sft_trainer_engine", overrides=overrides)
    assert (c.data.train_files, c.data.messages_key, c.model.path) == ("data/early/x/verl/sr.parquet", "messages", "/m")
    assert "hf_model" in c.checkpoint.save_contents and c.trainer.n_gpus_per_node == 4 and c.trainer.save_freq == 5
    # the GPU machine without flash-attn (docs/gpu/early_sft_verl_smoke): its overrides compose too
    line = next(x for x in (ROOT / "scripts" / "device_prepare.sh").read_text().splitlines()
                if x.startswith("export DEVICE_SFT_OVERRIDES="))
    extra = shlex.split(line.split("=", 1)[1])[0].split()
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        c = compose(config_name="sft_trainer_engine", overrides=overrides + extra)
    assert (c.model.use_remove_padding, c.engine.use_torch_compile, c.model.override_config.attn_implementation) == (
        False, False, "sdpa")


def test_one_command_per_arm():
    lines = dry_run("early_erl.sh", "iwm", "trainer.total_steps=3")
    stages = [x for x in lines if x[2:4] == ["erl.cli.early", "train"]]
    assert [s[4] for s in stages] == ["stage=iwm", "stage=il"]
    assert "model.init_from=outputs/early/frozenlake/iwm" in stages[1]
    rl = lines[-1]
    assert rl[2] == "erl.cli.train" and "model.init_from=outputs/early/frozenlake/iwm-il" in rl
    assert rl[-1] == "trainer.total_steps=3"
    assert "model.init_from" not in " ".join(dry_run("early_erl.sh", "none")[-1])
    verl_lines = dry_run("early_verl.sh", "sr", "sokoban_rlvr", MODEL_PATH="/m")
    assert "env=sokoban" in verl_lines[0] and "env.params=null" in verl_lines[0]
    assert verl_lines[1][:3] == ["env", "OUT=outputs/early_verl/sokoban-sr", "MODEL_PATH=/m"]
    assert verl_lines[-1][:2] == ["env", "MODEL_PATH=outputs/early_verl/sokoban-sr/final"]
    assert verl_lines[-1][3].endswith("scripts/sokoban_rlvr.sh")


def test_il_tag_rl_is_one_command_per_row():
    """scripts/il_tag_rl.sh: the docs/gpu/il_action_tag settings (tagged expert data on the RL run's
    1,024 tasks, 6 IL epochs, preset=gpu with action tags, 16 new tokens), a folder per mode and seed."""
    build, stage, rl = dry_run("il_tag_rl.sh", "rlvr", "2", "trainer.total_steps=60", MODEL_PATH="/m")
    assert build[2:4] == ["erl.cli.early", "build"] and "n_tasks=1024" in build and "env.params.action_tag=true" in build
    assert stage[4] == "stage=il" and "trainer.epochs=6" in stage and "trainer.output_dir=outputs/early/frozenlake-tag/il" in stage
    assert rl[2] == "erl.cli.train" and rl[-1] == "trainer.total_steps=60"
    for arg in ("model.init_from=outputs/early/frozenlake-tag/il", "erl.mode=rlvr", "erl.max_new_tokens=16", "seed=2",
                "preset=gpu", "env.params.action_tag=true", "trainer.output_dir=outputs/early/frozenlake-tag/il-rlvr-s2"):
        assert arg in rl, arg
    # the composed run config is what the GPU runs used
    from hydra import compose, initialize_config_dir

    from erl.cli.app import config_dir
    overrides = [a for a in rl[3:] if not a.startswith("model.path=")]
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        c = compose("train", overrides=overrides)
    assert (c.env.n_train, c.env.params.action_tag, c.trainer.tasks_per_step, c.erl.n_attempt) == (1024, True, 64, 8)
    # STAGE=il_rehearse: the dataset with the policy's reflections (its own folder), the rehearsal stage
    build, stage, rl = dry_run("il_tag_rl.sh", "erl", "1", STAGE="il_rehearse", MODEL_PATH="/m")
    assert "early.reflections=true" in build and "out=data/early/frozenlake-tag-refl" in build
    assert stage[4] == "stage=il_rehearse" and "data=data/early/frozenlake-tag-refl" in stage
    assert "model.init_from=outputs/early/frozenlake-tag/il_rehearse" in rl
    assert "trainer.output_dir=outputs/early/frozenlake-tag/il_rehearse-erl-s1" in rl
    # Sokoban: the env overrides reach the dataset and the run alike (the same rooms)
    build, _, rl = dry_run("il_tag_rl.sh", "erl", ENV="sokoban", ENV_ARGS="env.params.max_moves=4", MODEL_PATH="/m")
    assert "env=sokoban" in build and "env.params.max_moves=4" in build
    assert "env=sokoban" in rl and "env.params.max_moves=4" in rl and "seed=0" in rl
    for bad in (["pg", "0"], ["erl", "x"]):
        res = subprocess.run(["bash", str(ROOT / "scripts" / "il_tag_rl.sh"), *bad], env={**os.environ, "DRY_RUN": "1"},
                             capture_output=True, text=True, check=False)
        assert res.returncode == 2 and "il_tag_rl.sh" in res.stderr


def test_arms_side_by_side_share_the_data_and_stages(tmp_path):
    """scripts/early_compare.sh: one dataset, the four stages (IWM's result starts IL), then the
    greedy eval of the base model and of each arm, with the same overrides as early_erl.sh."""
    lines = dry_run("early_compare.sh", ENV="sokoban", MODEL_PATH="/m", EVAL_ARGS="eval.n=64",
                    OUT=str(tmp_path / "o"))
    assert lines[0][2:4] == ["erl.cli.early", "build"] and "env=sokoban" in lines[0] and "model.path=/m" in lines[0]
    stages = [(x[4], x[-2]) for x in lines if x[2:4] == ["erl.cli.early", "train"]]
    o = tmp_path / "o"
    assert stages == [("stage=il", "data=data/early/sokoban"), ("stage=iwm", "data=data/early/sokoban"),
                      ("stage=il", "data=data/early/sokoban"), ("stage=sr", "data=data/early/sokoban")]
    assert f"model.init_from={o}/iwm" in lines[3]
    # a stage that a device call cut off is continued when the script is called again, not refused
    assert all(x[5] == "resume=true" for x in lines if x[2:4] == ["erl.cli.early", "train"])
    evals = [x for x in lines if x[2] == "erl.cli.evaluate"]
    assert [next((a for a in e if a.startswith("model.init_from=")), None) for e in evals] == [
        None, f"model.init_from={o}/il", f"model.init_from={o}/iwm-il", f"model.init_from={o}/sr"]
    assert all(e[-1] == "eval.n=64" and f"eval.out={o}/eval_{arm}.json" in e
               for e, arm in zip(evals, ("base", "il", "iwm-il", "sr")))
    assert not o.exists()  # a dry run writes nothing


def test_arm_list_trains_and_evaluates_only_its_arms(tmp_path):
    """ARM_LIST picks arms, so one call per arm can run side by side on one dataset: IWM -> IL
    still trains IWM first, SR alone trains nothing else, and an unknown arm stops the script
    before the dataset is built."""
    o = tmp_path / "o"
    lines = dry_run("early_compare.sh", ENV="sokoban", OUT=str(o), ARM_LIST="iwm-il")
    assert [x[2:4] for x in lines] == [["erl.cli.early", "build"], ["erl.cli.early", "train"],
                                       ["erl.cli.early", "train"], ["erl.cli.evaluate", "env=sokoban"],
                                       ["erl.early.report", str(o)]]
    assert (lines[1][4], lines[2][4]) == ("stage=iwm", "stage=il") and f"model.init_from={o}/iwm" in lines[2]
    assert f"eval.out={o}/eval_iwm-il.json" in lines[3]
    lines = dry_run("early_compare.sh", ENV="sokoban", OUT=str(o), ARM_LIST="sr base")
    assert [x[4] for x in lines if x[2:4] == ["erl.cli.early", "train"]] == ["stage=sr"]
    assert [next(a for a in e if a.startswith("eval.out=")) for e in lines if e[2] == "erl.cli.evaluate"] == [
        f"eval.out={o}/eval_sr.json", f"eval.out={o}/eval_base.json"]
    res = subprocess.run(["bash", str(ROOT / "scripts" / "early_compare.sh")], capture_output=True, text=True,
                         env={**os.environ, "DRY_RUN": "1", "ARM_LIST": "il iwm"}, check=False)
    assert res.returncode == 2 and "unknown arm 'iwm'" in res.stderr and res.stdout == ""


def test_per_stage_overrides_reach_only_their_stage(tmp_path):
    """IWM_ARGS / SR_ARGS follow STAGE_ARGS on their own stage's command (so they win in Hydra),
    and never on IL's, not even on the IL that IWM's result starts."""
    lines = dry_run("early_compare.sh", ENV="sokoban", STAGE_ARGS="trainer.epochs=6", IWM_ARGS="trainer.epochs=2",
                    SR_ARGS="trainer.epochs=3 trainer.lr=5e-5", OUT=str(tmp_path / "o"))
    tails = [(x[4], x[x.index("trainer.epochs=6"):]) for x in lines if x[2:4] == ["erl.cli.early", "train"]]
    assert [t for _, t in tails] == [["trainer.epochs=6"], ["trainer.epochs=6", "trainer.epochs=2"],
                                    ["trainer.epochs=6"], ["trainer.epochs=6", "trainer.epochs=3", "trainer.lr=5e-5"]]
    assert [name for name, _ in tails] == ["stage=il", "stage=iwm", "stage=il", "stage=sr"]


def test_stage_config_refuses_non_finite_numbers():
    """nan compares false with everything, so `lr < 0` alone let `trainer.lr=nan` through; the
    stage config now shares the local trainer's finite-number check."""
    from erl.core.config import ConfigError
    from erl.early.train import EarlyTrainConfig

    for key in ("lr", "grad_clip", "weight_decay"):
        with pytest.raises(ConfigError, match=f"trainer.{key} must be a finite number >= 0"):
            EarlyTrainConfig.from_dict({key: float("nan")})


def test_early_switches_refuse_words_hydra_passes_as_strings():
    """`early.rationales=no` reached the build as the string "no", which is true, and still wrote
    sr.jsonl; the stage's progress and the build's overwrite took any value too."""
    from erl.core.config import ConfigError
    from erl.early.build import BuildConfig
    from erl.early.train import EarlyTrainConfig

    for key in ("rationales", "reflections"):
        with pytest.raises(ConfigError, match=f"early.{key} must be true or false, got 'no'"):
            BuildConfig(**{key: "no"})
    with pytest.raises(ConfigError, match="trainer.progress must be true or false, got 'off'"):
        EarlyTrainConfig.from_dict({"progress": "off"})
