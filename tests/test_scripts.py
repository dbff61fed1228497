"""scripts/*.sh compose the right Hydra overrides (DRY_RUN=1 prints the command) for 1-8 GPUs
per node and 1-2 nodes, unchanged between a laptop-sized and a cluster run."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["frozenlake_erl", "frozenlake_rlvr", "sokoban_erl", "sokoban_rlvr", "hotpotqa_erl", "hotpotqa_rlvr",
               "frozenlake_no_reflection", "frozenlake_no_memory"]


def dry_run(script: str, *args: str, **env: str) -> list[str]:
    full = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full.update(DRY_RUN="1", **env)
    out = subprocess.run(["bash", str(ROOT / "scripts" / f"{script}.sh"), *args], env=full, capture_output=True,
                         text=True, check=True).stdout
    return shlex.split(out)


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_overrides_for_each_cluster_shape(nodes, gpus):
    cmd = dry_run("frozenlake_erl", "trainer.total_training_steps=20",
                  N_NODES=str(nodes), N_GPUS_PER_NODE=str(gpus), MODEL_PATH="/models/m", ROLLOUT="hf")
    assert cmd[cmd.index("-m") + 1] == "erl.trainers.verl.main"
    assert cmd[cmd.index("--config-name") + 1] == "frozenlake_erl"
    tail = cmd[cmd.index("--config-name") + 2:]
    assert tail == [f"trainer.nnodes={nodes}", f"trainer.n_gpus_per_node={gpus}",
                    "actor_rollout_ref.model.path=/models/m", "actor_rollout_ref.rollout.name=hf",
                    "trainer.total_training_steps=20"]
    # several nodes join the existing Ray cluster; one node starts its own Ray
    assert (cmd[0] == "RAY_ADDRESS=auto") == (nodes > 1)
    pytest.importorskip("verl")
    from erl.trainers.verl.config import compose, validate

    s = validate(compose("frozenlake_erl", tail), check_model_files=False)
    assert s.world_size == nodes * gpus and s.tasks_per_step % s.world_size == 0
    assert s.backend == "hf" and s.total_steps == 20


def test_every_experiment_has_a_script_and_defaults():
    for exp in EXPERIMENTS:
        cmd = dry_run(exp)
        assert cmd[cmd.index("--config-name") + 1] == exp
        assert "trainer.n_gpus_per_node=8" in cmd and "trainer.nnodes=1" in cmd
        assert "actor_rollout_ref.rollout.name=vllm" in cmd
        assert any(a.startswith("actor_rollout_ref.model.path=") and a.endswith("Qwen3-4B-Instruct-2507") for a in cmd)


def test_extra_arguments_pass_through_unchanged():
    cmd = dry_run("sokoban_rlvr", "erl.tau=0.5", "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
                  "trainer.logger=[console,tensorboard]", "x=a b")
    assert cmd[-4:] == ["erl.tau=0.5", "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
                        "trainer.logger=[console,tensorboard]", "x=a b"]


@pytest.mark.parametrize("env, message", [({"N_NODES": "0"}, "N_NODES"), ({"N_GPUS_PER_NODE": "two"}, "N_GPUS_PER_NODE"),
                                          ({"ROLLOUT": "tgi"}, "ROLLOUT")])
def test_bad_environment_is_refused(env, message):
    full = dict(os.environ, DRY_RUN="1", **env)
    res = subprocess.run(["bash", str(ROOT / "scripts" / "frozenlake_erl.sh")], env=full, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 2 and message in res.stderr


def test_resume_check_resumes_the_original_runs_step_10_checkpoint():
    out = subprocess.run(["bash", str(ROOT / "scripts" / "verl_resume_check.sh"), "data.train_batch_size=4"],
                         env={**os.environ, "DRY_RUN": "1", "CHECK_DIR": "/ck", "MODEL_PATH": "/models/m"},
                         capture_output=True, text=True, check=True).stdout
    original, resumed, control = [shlex.split(line) for line in out.strip().splitlines()]
    assert control[-3:] == ["trainer.default_local_dir=/ck/control", *resumed[-2:]]
    for cmd in (original, resumed, control):  # same run settings; only the folder and resume differ
        assert "trainer.total_training_steps=11" in cmd and "trainer.save_freq=10" in cmd
        assert "data.train_batch_size=4" in cmd and "actor_rollout_ref.rollout.name=hf" in cmd
    # the original keeps every checkpoint: its last step saves too, and a kept count of one
    # (scale/small_gpu) removed step 10's actor files before the resumed run could read them
    assert original[-3:] == ["trainer.default_local_dir=/ck/original", "trainer.resume_mode=disable",
                             "trainer.max_actor_ckpt_to_keep=null"]
    assert resumed[-3:] == ["trainer.default_local_dir=/ck/resumed", "trainer.resume_mode=resume_path",
                            "trainer.resume_from_path=/ck/original/global_step_10"]
    pytest.importorskip("verl")
    from erl.trainers.verl.config import compose, validate

    tail = resumed[resumed.index("--config-name") + 2:]
    s = validate(compose("frozenlake_erl", tail), check_model_files=False)
    assert s.total_steps == 11 and s.cfg["trainer"]["resume_from_path"] == "/ck/original/global_step_10"
    head = original[original.index("--config-name") + 2:]
    kept = validate(compose("frozenlake_erl", [*head, "+scale=small_gpu"]), check_model_files=False)
    assert kept.cfg["trainer"]["max_actor_ckpt_to_keep"] is None


def test_smoke_script_runs_any_experiment_at_small_scale_and_later_overrides_win():
    out = subprocess.run(["bash", str(ROOT / "scripts" / "verl_smoke.sh"), "hotpotqa_langgraph_erl", "3",
                          "erl.max_new_tokens=96"],
                         env={**os.environ, "DRY_RUN": "1", "MODEL_PATH": "/models/m"},
                         capture_output=True, text=True, check=True).stdout
    cmd = shlex.split(out)
    assert cmd[cmd.index("--config-name") + 1] == "hotpotqa_langgraph_erl"
    assert "trainer.n_gpus_per_node=1" in cmd and "actor_rollout_ref.rollout.name=hf" in cmd
    pytest.importorskip("verl")
    from erl.trainers.verl.config import compose, validate

    s = validate(compose("hotpotqa_langgraph_erl", cmd[cmd.index("--config-name") + 2:]), check_model_files=False)
    assert s.total_steps == 3 and s.tasks_per_step == 4 and s.erl.n_attempt == 2
    assert s.erl.max_new_tokens == 96  # the caller's override comes last and wins
    assert s.trainer.runner == "examples.hotpotqa_langgraph.train_local:make_runner"


def _compare_phase(check_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "verl_resume_check.sh")],
                          env={**os.environ, "PHASE": "compare", "SAVE_AT": "2", "CHECK_DIR": str(check_dir)},
                          capture_output=True, text=True, check=False)


def test_resume_check_compares_without_a_control_run_when_none_was_made(tmp_path):
    import json

    def write(run: str, tokens: float) -> None:
        (tmp_path / run).mkdir(exist_ok=True)
        rows = [{"step": 2, "tokens/generated": 900.0}, {"step": 3, "tokens/generated": tokens, "rows": 24.0}]
        (tmp_path / run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("original", 1900.0)
    write("resumed", 1900.0)
    res = _compare_phase(tmp_path)  # PHASE=original, resumed only: no control/ folder
    assert res.returncode == 0, res.stdout + res.stderr
    assert "missing" not in res.stdout and "control" not in res.stdout.splitlines()[0]
    assert res.stdout.strip().endswith("step 3: REPRODUCED")
    write("resumed", 2064.0)  # a different sample count fails strictly: no noise level is known
    res = _compare_phase(tmp_path)
    assert res.returncode == 1 and "step 3: NOT reproduced" in res.stdout
    write("control", 1950.0)  # resumed -> control gap 114, 2 x 114 >= 164: within the machine's noise
    res = _compare_phase(tmp_path)
    assert res.returncode == 0 and "control" in res.stdout.splitlines()[0]
    assert res.stdout.strip().endswith("step 3: REPRODUCED within run-to-run noise")


def test_launched_command_reaches_the_config_check(tmp_path):
    """The launcher for real (no DRY_RUN): Hydra must parse every override. A missing model folder
    is the first thing validation reports, before Ray or any GPU work: exit 2 naming the folder."""
    pytest.importorskip("verl")
    missing = tmp_path / "no-model"
    full = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full.update(MODEL_PATH=str(missing), ROLLOUT="hf", N_GPUS_PER_NODE="1")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "frozenlake_erl.sh"), "data.train_batch_size=4",
                          "+env.params.size_max=3"], env=full, capture_output=True, text=True, check=False)
    assert "unrecognized arguments" not in res.stderr
    assert res.returncode == 2 and "erl-verl: error:" in res.stderr and "no-model" in res.stderr, res.stderr[-2000:]


def test_searchpath_goes_after_the_options_and_before_the_overrides():
    pytest.importorskip("verl")
    from hydra._internal.utils import get_args_parser

    from erl.trainers.verl.config import searchpath
    from erl.trainers.verl.main import with_searchpath

    args = with_searchpath(["--config-name", "sokoban_rlvr", "--cfg", "job", "erl.tau=0.5", "x=1"])
    assert args[:5] == ["--config-name", "sokoban_rlvr", "--cfg", "job", searchpath()]
    parsed = get_args_parser().parse_args(args)
    assert parsed.config_name == "sokoban_rlvr" and parsed.overrides == [searchpath(), "erl.tau=0.5", "x=1"]
    assert with_searchpath(["--config-name=a"]) == ["--config-name=a", searchpath()]


def test_local_resume_check_resumes_in_new_processes_to_the_original_step(tmp_path):
    """scripts/local_resume_check.sh on the tiny model: the original trains 2 steps with a checkpoint
    at step 1; a resumed and a control run, each a new process, train step 2 from it; the compare
    finds every sampled count and loss of step 2 equal (what a process keeps besides the checkpoint
    must not matter). DRY_RUN prints the three commands, which differ only in folder and resume."""
    small = ["model=tiny", "trainer.tasks_per_step=2", "trainer.eval_tasks=2", "env.n_train=4", "env.n_val=2",
             "erl.n_attempt=2", "erl.max_turns=2", "erl.max_new_tokens=4", "erl.max_reflection_tokens=8"]
    env = {**os.environ, "CHECK_DIR": str(tmp_path), "SAVE_AT": "1"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "local_resume_check.sh"), *small],
                         env={**env, "DRY_RUN": "1"}, capture_output=True, text=True, check=True).stdout
    original, resumed, control = [shlex.split(line) for line in out.strip().splitlines()]
    for cmd in (original, resumed, control):
        assert cmd[1:3] == ["-m", "erl.cli.train"] and "model=tiny" in cmd and "trainer.total_steps=2" in cmd
        assert "trainer.save_every=1" in cmd and "trainer.keep_checkpoints=0" in cmd
    assert original[-1] == f"trainer.output_dir={tmp_path}/original"
    assert resumed[-2:] == [f"trainer.output_dir={tmp_path}/resumed", f"resume={tmp_path}/original/checkpoints/step_1"]
    assert control[:-2] == resumed[:-2] == original[:-1]
    res = subprocess.run(["bash", str(ROOT / "scripts" / "local_resume_check.sh"), *small], env=env,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stdout.strip().endswith("step 2: REPRODUCED")
    assert "tokens/generated" in res.stdout and "DIFFERS" not in res.stdout
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "local_resume_check.sh")], env={**env, "SAVE_AT": "0"},
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "SAVE_AT must be a step >= 1" in bad.stderr


def test_erl_verl_writes_nothing_where_it_starts_and_refuses_missing_gpus_in_one_line(tmp_path):
    """erl-verl through Hydra, started in an empty folder on a machine without a GPU (CUDA hidden):
    the missing GPU is one line and exit code 2, and Hydra left no outputs/<date>/<time>/ (nor a
    main.log) in the folder, as erl-train leaves none."""
    from erl.models.tiny import build_tiny_model, build_tiny_tokenizer

    model = tmp_path / "model"
    tok = build_tiny_tokenizer()
    build_tiny_model(tok).save_pretrained(model)
    tok.save_pretrained(model)
    start = tmp_path / "start"
    start.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "erl.trainers.verl.main", "--config-name", "frozenlake_erl",
                          f"actor_rollout_ref.model.path={model}", "trainer.n_gpus_per_node=1",
                          f"trainer.default_local_dir={tmp_path / 'run'}"],
                         cwd=start, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 2, res.stderr
    want = ("erl-verl: error: trainer.n_gpus_per_node=1 but this machine has 0 CUDA GPU(s); without a GPU, "
            "the local trainer (erl-train) runs ERL on CPU")
    assert res.stderr.strip().splitlines() == [want]
    assert list(start.iterdir()) == [] and not (tmp_path / "run").exists()


def test_the_docker_image_holds_every_folder_the_suite_reads():
    """The CPU image runs this suite: the folders the tests read from the repository root (the benchmarks'
    tools, the CI script the README's test command matches, ...) are copied into it; benchmarks/ and .ci/
    had been left out."""
    import re

    copied = {src for line in re.findall(r"^COPY (.+)$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
              for src in line.split()[:-1]}
    read = set()
    for test in (ROOT / "tests").glob("*.py"):
        read |= set(re.findall(r'(?:ROOT|parents\[1\]) / "([^"/]+)"', test.read_text()))
    read = {name for name in read if (ROOT / name).exists()} - {"Dockerfile"}  # this test's own
    assert {"benchmarks", ".ci", "scripts", "README.md"} <= read
    assert read <= copied, sorted(read - copied)
