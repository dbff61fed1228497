"""Every shipped verl config composes and validates; bad keys, values and inputs fail with an
error naming the field, before Ray is started."""

from pathlib import Path

import pytest

pytest.importorskip("verl")

from erl.core.config import ConfigError
from erl.trainers.verl.config import compose, config_dir, experiments, validate

EXPECTED = {"frozenlake_erl", "frozenlake_rlvr", "sokoban_erl", "sokoban_rlvr", "hotpotqa_erl", "hotpotqa_rlvr",
            "frozenlake_no_reflection", "frozenlake_no_memory"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    from erl.models.tiny import build_tiny_model, build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("m")
    tok = build_tiny_tokenizer()
    build_tiny_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_every_experiment_composes_with_paper_settings():
    assert set(experiments()) == EXPECTED | {"hotpotqa_langgraph_erl"}
    for name in sorted(EXPECTED):
        s = validate(compose(name), check_model_files=False)
        env, mode = name.split("_", 1)
        assert s.env_name == env and s.erl.mode == mode, name
        a = s.cfg["actor_rollout_ref"]
        # ERL_SPEC section 3: lr 1e-6, 64 tasks, n=4 per attempt, T 0.7, clip .2/.28, KL .001, 8 turns
        assert a["actor"]["optim"]["lr"] == 1e-6 and s.tasks_per_step == 64
        assert s.erl.n_attempt == 4 and a["rollout"]["n"] == 4 and a["rollout"]["temperature"] == 0.7
        assert (a["actor"]["clip_ratio_low"], a["actor"]["clip_ratio_high"]) == (0.2, 0.28)
        assert a["actor"]["kl_loss_coef"] == 0.001 and a["actor"]["use_kl_loss"] is True
        assert s.erl.max_turns == 8 and a["model"]["path"].endswith("Qwen3-4B-Instruct-2507")
        assert s.cfg["trainer"]["experiment_name"] == f"{env}-{mode}"
    # compute matching: the RLVR baseline samples 2n first attempts, ERL n (+ n second attempts)
    assert validate(compose("sokoban_rlvr"), check_model_files=False).erl.first_attempts_per_task == 8
    assert validate(compose("sokoban_erl"), check_model_files=False).erl.first_attempts_per_task == 4



def test_small_gpu_scale_gives_the_local_gpu_preset_shape():
    """`+scale=small_gpu` on any experiment: the local preset=gpu shape (64 tasks, n=8: 16 first
    attempts for RLVR), full fine-tuning at 2e-5, no gradient checkpointing, sdpa, one GPU."""
    for name in ("frozenlake_erl", "frozenlake_rlvr", "hotpotqa_langgraph_erl"):
        s = validate(compose(name, ["+scale=small_gpu"]), check_model_files=False)
        a = s.cfg["actor_rollout_ref"]
        assert s.tasks_per_step == 64 and s.erl.n_attempt == 8 and s.erl.max_turns == 4
        assert s.erl.first_attempts_per_task == (16 if name.endswith("rlvr") else 8)
        assert a["actor"]["optim"]["lr"] == 2e-5 and a["model"]["enable_gradient_checkpointing"] is False
        assert a["model"]["override_config"]["attn_implementation"] == "sdpa"
        assert s.cfg["trainer"]["n_gpus_per_node"] == 1 and s.trainer.eval_tasks == 64
        assert a["rollout"]["max_num_seqs"] == 1024  # the engine's slots: the local gen_batch_size
        assert a["rollout"]["engine_kwargs"]["hf"] == {"regions": True, "decode_attention": "flex"}  # its kernels


def test_lora_with_the_hf_rollout_needs_merged_sync():
    """verl syncs bare adapters unless lora.merge; the hf rollout's copy takes full weights, so an
    unmerged LoRA run is refused before Ray starts, and the rollout refuses adapters too."""
    import asyncio

    from erl.trainers.verl.hf_rollout import HFRolloutEngine

    base = ["+scale=small_gpu", "actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.model.lora_rank=16"]
    with pytest.raises(ConfigError, match="lora.merge must be true"):
        validate(compose("frozenlake_erl", base), check_model_files=False)
    s = validate(compose("frozenlake_erl", [*base, "actor_rollout_ref.model.lora.merge=true"]), check_model_files=False)
    assert s.cfg["actor_rollout_ref"]["model"]["lora_rank"] == 16
    engine = HFRolloutEngine.__new__(HFRolloutEngine)  # update_weights checks before touching a model
    with pytest.raises(ValueError, match="lora.merge=true"):
        asyncio.run(engine.update_weights(iter([]), peft_config={"r": 16}))

def test_langgraph_experiment_loads_the_example_runner(monkeypatch):
    from erl.agents.langgraph import LangGraphAttemptRunner
    from erl.workflow.factories import load_runner

    s = validate(compose("hotpotqa_langgraph_erl"), check_model_files=False)
    assert (s.env_name, s.erl.mode) == ("hotpotqa", "erl")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # launch_verl.sh puts the root on PYTHONPATH
    assert isinstance(load_runner(s.trainer.runner), LangGraphAttemptRunner)
    with pytest.raises(ConfigError, match="cannot be imported"):
        load_runner("examples.nowhere:make_runner")


@pytest.mark.parametrize("override, field", [
    ("erl.mode=bogus", "erl.mode"),
    ("+erl.bogus=1", "bogus"),
    ("erl.bogus=1", "erl.bogus"),                     # not in the config: Hydra refuses it
    ("trainer.n_gpus_per_nod=2", "trainer.n_gpus_per_nod"),
    ("+erl_trainer.bogus=1", "erl_trainer"),
    ("env.name=chess", "env.name"),
    ("actor_rollout_ref.rollout.name=tgi", "actor_rollout_ref.rollout.name"),
    ("actor_rollout_ref.rollout.n=0", "actor_rollout_ref.rollout.n"),
    ("erl.n_attempt=0", "erl.n_attempt"),
    ("actor_rollout_ref.rollout.n=3", "must equal erl.n_attempt"),
    ("actor_rollout_ref.actor.loss_agg_mode=seq-sum", "loss_agg_mode"),
    ("actor_rollout_ref.actor.clip_ratio_high=-1", "clip_ratio_high"),
    ("erl_trainer.progress=maybe", "erl_trainer.progress"),
])
def test_bad_key_or_value_names_the_field(override, field):
    import ray

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(compose("frozenlake_erl", [override]), check_model_files=False)
    assert not ray.is_initialized()


def test_batch_must_split_across_gpus():
    with pytest.raises(ConfigError, match=r"data\.train_batch_size \(6 tasks\).*2 x 4 = 8"):
        validate(compose("frozenlake_erl", ["data.train_batch_size=6", "trainer.nnodes=2",
                                            "trainer.n_gpus_per_node=4"]), check_model_files=False)
    s = validate(compose("frozenlake_erl", ["data.train_batch_size=64", "trainer.nnodes=2",
                                            "trainer.n_gpus_per_node=8"]), check_model_files=False)
    assert s.world_size == 16


def test_model_folder_and_chat_template(model_folder, tmp_path):
    import json

    import ray

    ok = validate(compose("frozenlake_erl", [f"actor_rollout_ref.model.path={model_folder}"]))
    assert ok.model_path == str(model_folder)
    with pytest.raises(ConfigError, match=r"actor_rollout_ref\.model\.path.*does not exist"):
        validate(compose("frozenlake_erl", [f"actor_rollout_ref.model.path={tmp_path / 'missing'}"]))
    # the same model whose tokenizer lost its chat template
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in model_folder.iterdir():
        if f.name != "chat_template.jinja":
            (bare / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="no chat template"):
        validate(compose("frozenlake_erl", [f"actor_rollout_ref.model.path={bare}"]))
    assert not ray.is_initialized()


def test_build_fails_before_ray(tmp_path):
    """The entry point validates first: a bad config never starts Ray or touches a GPU."""
    import ray

    from erl.trainers.verl.main import build

    with pytest.raises(ConfigError, match="env.name"):
        build(compose("frozenlake_erl", ["env.name=nope", f"actor_rollout_ref.model.path={tmp_path}"]))
    with pytest.raises(ConfigError, match="does not exist"):
        build(compose("frozenlake_erl", [f"actor_rollout_ref.model.path={tmp_path / 'x'}"]))
    assert not ray.is_initialized()


def test_build_refuses_more_gpus_than_the_machine_has_before_ray(model_folder, monkeypatch):
    """A local run asking for more GPUs than torch sees ends in one line before Ray starts (verl's own
    resource check raised a traceback after it); on a Ray cluster (RAY_ADDRESS) the cluster decides."""
    import ray
    import torch

    from erl.trainers.verl.main import build, check_local_gpus

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match=r"n_gpus_per_node=1 but this machine has 0 CUDA GPU\(s\); without a GPU"):
        build(compose("frozenlake_erl", [f"actor_rollout_ref.model.path={model_folder}", "trainer.n_gpus_per_node=1"]))
    assert not ray.is_initialized()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"n_gpus_per_node=4 but this machine has 2 CUDA GPU\(s\)$"):
        check_local_gpus({"trainer": {"nnodes": 1, "n_gpus_per_node": 4}})
    check_local_gpus({"trainer": {"nnodes": 1, "n_gpus_per_node": 2}})
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    check_local_gpus({"trainer": {"nnodes": 1, "n_gpus_per_node": 4}})


def test_resume_path_must_be_an_erl_checkpoint(model_folder, tmp_path):
    import ray

    base = [f"actor_rollout_ref.model.path={model_folder}", "trainer.resume_mode=resume_path"]
    with pytest.raises(ConfigError, match=r"trainer\.resume_from_path=.*is not an ERL checkpoint"):
        validate(compose("frozenlake_erl", base + [f"trainer.resume_from_path={tmp_path / 'global_step_10'}"]))
    ckpt = tmp_path / "global_step_10"
    ckpt.mkdir()
    (ckpt / "erl_state.json").write_text('{"step": 10, "cursor": 40, "seed": 0}')
    # what verl's max_actor_ckpt_to_keep leaves of an older step: ERL's files, no actor/ files
    (ckpt / "actor").mkdir()
    with pytest.raises(ConfigError, match=r"global_step_10' has no actor/ files.*max_actor_ckpt_to_keep=null"):
        validate(compose("frozenlake_erl", base + [f"trainer.resume_from_path={ckpt}"]))
    (ckpt / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"")
    assert validate(compose("frozenlake_erl", base + [f"trainer.resume_from_path={ckpt}"])).total_steps == 200
    with pytest.raises(ConfigError, match="trainer.resume_mode"):
        validate(compose("frozenlake_erl", ["trainer.resume_mode=sometimes"]), check_model_files=False)
    assert not ray.is_initialized()


def test_tracker_writes_metrics_and_redraws_the_curves_every_step(tmp_path):
    import json

    from erl.trainers.verl.main import make_tracker

    s = validate(compose("frozenlake_erl", [f"trainer.default_local_dir={tmp_path}", "trainer.logger=[]"]),
                 check_model_files=False)
    tracker = make_tracker(s)
    tracker.log(0, {"eval/success": 0.25})
    png = tmp_path / "curves.png"
    assert png.is_file()  # there after the first line, not only when the run ends
    first = png.read_bytes()
    tracker.log(1, {"attempt1/success": 0.5, "attempt2/success": 1.0, "eval/success": 0.5})
    assert png.read_bytes() != first  # redrawn with step 1's points
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and rows[1]["attempt2/success"] == 1.0


A = "actor_rollout_ref.actor"


@pytest.mark.parametrize("override, message", [
    (f"{A}.policy_loss.loss_mode=gspo", rf"{A}.policy_loss.loss_mode must be one of \['vanilla'\], got 'gspo'"),
    (f"{A}.policy_loss.loss_mode=clip_cov", r"policy_loss\.loss_mode must be one of \['vanilla'\]"),
    (f"{A}.loss_agg_mode=seq-mean-token-sum-norm", r"loss_agg_mode must be one of \['token-mean', "),
    (f"{A}.loss_agg_mode=token-sum", r"loss_agg_mode must be one of .*'seq-mean-token-sum'\], got 'token-sum'"),
    (f"{A}.loss_scale_factor=512", r"loss_scale_factor must be None \(it only scales seq-mean-token-sum-norm"),
    (f"{A}.clip_ratio_c=1.0", r"clip_ratio_c must be a finite number > 1 \(the dual-clip bound\), got 1.0"),
    (f"{A}.kl_loss_type=full", r"kl_loss_type must be one of \['k1', 'k2', 'low_var_kl'"),
    (f"{A}.entropy_coeff=lots", r"entropy_coeff must be a finite number, got 'lots'"),
    (f"{A}.use_kl_loss=maybe", r"use_kl_loss must be true or false"),
    ("algorithm.adv_estimator=gae", r"algorithm\.adv_estimator must be 'grpo' \(ERL computes GRPO advantages"),
    ("algorithm.use_kl_in_reward=true", r"algorithm\.use_kl_in_reward must be False"),
    ("algorithm.rollout_correction.rollout_is=token", r"rollout_correction\.rollout_is must be None"),
])
def test_a_loss_setting_erl_would_ignore_stops_the_run(override, message):
    """verl's policy-loss code never runs under ERL: anything it would have honoured and ERL's loss
    does not is refused by name, before Ray."""
    import ray

    with pytest.raises(ConfigError, match=message):
        validate(compose("frozenlake_erl", [override]), check_model_files=False)
    assert not ray.is_initialized()


def test_honoured_loss_settings_reach_the_loss():
    from erl.core.losses import LossSettings

    s = validate(compose("frozenlake_erl"), check_model_files=False).loss
    # the composed config: clip .2 / .28, verl's dual-clip default 3, KL .001 low_var_kl, no entropy bonus
    assert s == LossSettings(clip_low=0.2, clip_high=0.28, clip_ratio_c=3.0, loss_agg_mode="token-mean",
                             kl_coef=0.001, kl_kind="low_var_kl", entropy_coeff=0.0, distill_mode="sft",
                             distill_coef=1.0)
    cfg = validate(compose("frozenlake_erl", [
        f"{A}.clip_ratio_low=null", f"{A}.clip_ratio=0.1", f"{A}.clip_ratio_c=5", f"{A}.entropy_coeff=0.01",
        f"{A}.loss_agg_mode=seq-mean-token-sum", f"{A}.kl_loss_type=k3+", f"{A}.use_kl_loss=false"]),
        check_model_files=False)
    s = cfg.loss
    assert (s.clip_low, s.clip_high, s.clip_ratio_c) == (0.1, 0.28, 5.0)  # null low: clip_ratio, as verl
    assert (s.entropy_coeff, s.loss_agg_mode, s.kl_kind) == (0.01, "seq-mean-token-sum", "k3+")
    assert s.kl_coef == 0.0  # use_kl_loss false: no KL term whatever kl_loss_coef says


def test_erl_settings_are_declared_once_for_both_trainers():
    """erl_base.yaml composes configs/local/erl/default.yaml: every key the paper's scale does not
    change has erl-train's value, and the file lists only the four it changes."""
    import yaml
    from omegaconf import OmegaConf

    local = yaml.safe_load((config_dir().parent / "local" / "erl" / "default.yaml").read_text())
    verl = OmegaConf.to_container(compose("frozenlake_erl").erl)
    changed = {k for k in verl if verl[k] != local[k]}
    assert set(verl) == set(local)
    assert changed == {"max_turns", "reflection_require_tag", "max_new_tokens", "max_reflection_tokens"}
    assert yaml.safe_load((config_dir() / "erl_base.yaml").read_text())["erl"].keys() == changed


def test_env_section_checked_like_the_local_trainer():
    # attempts shorter than the env's episodes: refused by both trainers with the same message
    cfg = compose("frozenlake_erl", ["erl.max_turns=3", "+env.params.max_turns=5"])
    with pytest.raises(ConfigError, match=r"erl.max_turns \(3\) < env.params.max_turns \(5\)"):
        validate(cfg, check_model_files=False)
    with pytest.raises(ConfigError, match=r"env.n_val must be an integer >= 1, got 0"):
        validate(compose("frozenlake_erl", ["env.n_val=0"]), check_model_files=False)
