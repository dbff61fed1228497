"""The GPU preset: chosen by the main command on CUDA, composed as documented, and chained runs."""

import subprocess
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir


def test_the_main_command_picks_the_gpu_preset_only_on_cuda_without_a_choice(monkeypatch):
    from erl.cli.train import gpu_scale_default

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_scale_default(["erl-train"]) == ["erl-train", "preset=gpu"]
    assert gpu_scale_default(["erl-train", "env=sokoban"]) == ["erl-train", "env=sokoban", "preset=gpu"]
    for chosen in (["preset=null"], ["trainer.device=cpu"], ["--help"]):
        assert gpu_scale_default(["erl-train", *chosen]) == ["erl-train", *chosen]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_scale_default(["erl-train"]) == ["erl-train"]


def test_gpu_preset_composes_to_the_documented_scale():
    root = Path(__file__).resolve().parents[1]
    with initialize_config_dir(config_dir=str(root / "configs" / "local"), version_base=None):
        cfg = compose("train", overrides=["preset=gpu", "erl.mode=rlvr"])
    t = cfg.trainer
    assert (t.device, t.precision, t.tasks_per_step, t.lr) == ("cuda", "bf16", 64, 3e-4)
    assert cfg.erl.n_attempt == 8 and cfg.env.n_train == 1024  # rlvr: 2n = 16 first attempts a task
    assert t.rollout_regions is True and t.rollout_decode_attention == "flex"  # the engine's CUDA kernels


def test_chain_script_stops_inside_its_budget_and_the_next_call_resumes(tmp_path):
    root = Path(__file__).resolve().parents[1]
    tiny = ["model=tiny", "trainer.device=cpu", "trainer.precision=fp32",
            "trainer.rollout_regions=false", "trainer.rollout_decode_attention=efficient",  # preset=gpu's CUDA kernels "trainer.tasks_per_step=2",
            "trainer.total_steps=2", "trainer.micro_batch_size=4", "trainer.eval_tasks=2", "erl.n_attempt=2",
            "erl.max_new_tokens=4", "env.n_train=4", "env.n_val=2", "model.tiny.hidden=32", "model.tiny.layers=1"]
    env = {"RUNS": "rlvr:0", "BUDGET": "0.000001", "RUN_ROOT": str(tmp_path / "runs"), "OUT": str(tmp_path),
           "PATH": "/usr/bin:/bin", "PY": __import__("sys").executable}
    for expected in ([0, 1], [0, 1, 2]):
        subprocess.run(["bash", str(root / "scripts" / "gpu_chain.sh"), *tiny], env=env, check=True,
                       capture_output=True, timeout=600)
        lines = (tmp_path / "runs" / "frozenlake-rlvr-s0" / "metrics.jsonl").read_text().splitlines()
        assert [__import__("json").loads(x)["step"] for x in lines] == expected
    assert (tmp_path / "runs.tgz").stat().st_size > 0


def test_the_default_run_rolls_out_with_the_engine_on_cpu():
    """rollout_engine=auto (the default, kept by preset=gpu): the engine on CPU, where a
    multi-turn episode otherwise re-prefills every turn (on CUDA too: test_rollout_engine)."""
    from omegaconf import OmegaConf

    from erl.rollout.engine import RolloutEngine
    from erl.trainers.local.run import build

    root = Path(__file__).resolve().parents[1]
    with initialize_config_dir(config_dir=str(root / "configs" / "local"), version_base=None):
        gpu = compose("train", overrides=["preset=gpu"])
        cfg = compose("train", overrides=["model=tiny", "model.tiny.hidden=32", "model.tiny.layers=1",
                                          "env.n_train=2", "env.n_val=2", "trainer.progress=false"])
    assert gpu.trainer.rollout_engine == cfg.trainer.rollout_engine == "auto"
    trainer, _ = build(OmegaConf.to_container(cfg, resolve=True))
    assert trainer.device.type == "cpu" and isinstance(trainer.policy, RolloutEngine)
    assert trainer.policy.max_slots == cfg.trainer.gen_batch_size


def test_chain_script_restarts_a_run_that_crashed_before_its_first_checkpoint(tmp_path):
    """A run killed (out of memory, say) before it saved anything leaves a folder with its config:
    the next call must restart it from step 0, not stop at erl-train's 'already holds a run'."""
    import json
    import sys

    root = Path(__file__).resolve().parents[1]
    tiny = ["model=tiny", "trainer.device=cpu", "trainer.precision=fp32",
            "trainer.rollout_regions=false", "trainer.rollout_decode_attention=efficient",  # preset=gpu's CUDA kernels "trainer.tasks_per_step=2",
            "trainer.total_steps=1", "trainer.micro_batch_size=4", "trainer.eval_tasks=2", "erl.n_attempt=2",
            "erl.max_new_tokens=4", "env.n_train=4", "env.n_val=2", "model.tiny.hidden=32", "model.tiny.layers=1"]
    env = {"RUNS": "rlvr:0", "BUDGET": "600", "RUN_ROOT": str(tmp_path / "runs"), "PATH": "/usr/bin:/bin",
           "PY": sys.executable}
    run = tmp_path / "runs" / "frozenlake-rlvr-s0"
    subprocess.run(["bash", str(root / "scripts" / "gpu_chain.sh"), *tiny], env=env, check=True,
                   capture_output=True, timeout=600)
    import shutil

    shutil.rmtree(run / "checkpoints")  # as if the process died before its first save
    done = subprocess.run(["bash", str(root / "scripts" / "gpu_chain.sh"), *tiny], env=env, check=False,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + (tmp_path / "runs" / "frozenlake-rlvr-s0.log").read_text()[-2000:]
    assert "resume=true" in done.stdout
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert (run / "checkpoints").is_dir()
