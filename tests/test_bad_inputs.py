"""Every bad input the CLIs can be given ends with exit code 2 and one line naming the key or
file, within 3 s, before any work (no model trained, no Ray started), and every file that
existed before is byte-identical after. The CLIs run in-process through their Hydra main()."""

import contextlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from erl.cli import evaluate as eval_cli
from erl.cli import train as train_cli
from erl.trainers.verl import main as verl_main

TINY = ["model=tiny", "model.tiny.hidden=32", "model.tiny.layers=1", "model.tiny.heads=2"]
SMALL = ["trainer.total_steps=1", "trainer.tasks_per_step=2", "trainer.eval_tasks=2", "env.n_train=4",
         "env.n_val=2", "erl.n_attempt=2", "erl.max_turns=2", "erl.max_new_tokens=4", "erl.max_reflection_tokens=4",
         "trainer.loggers=[console]", "trainer.progress=false"]


def run_cli(main, argv: list[str], scratch: Path) -> tuple[object, str, float]:
    """(exit code, stderr, CPU seconds). Hydra's own run folder and log go to `scratch`.
    CPU time, not wall time: the test machine's 2 cores are shared by many processes."""
    argv = [*argv, f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    old, err = sys.argv, io.StringIO()
    sys.argv = ["prog", *argv]
    start = time.process_time()
    try:
        with contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old
    return code, err.getvalue(), time.process_time() - start


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "scratch" not in p.parts}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished run (with a checkpoint), task files and data files, good and bad."""
    root = tmp_path_factory.mktemp("bad_inputs")
    code, err, _ = run_cli(train_cli.main, [*TINY, *SMALL, f"trainer.output_dir={root / 'run'}"], root / "scratch")
    assert code == 0, err
    step = root / "run" / "checkpoints" / "step_1"
    bad_mem = root / "bad_memory" / "step_1"
    shutil.copytree(step, bad_mem)
    (bad_mem / "memory.json").write_text(json.dumps({"version": 1, "max_size": 4, "top_k": 1, "next_id": 0,
                                                     "counters": {}, "entries": [{"text": 3}]}))
    data = root / "data"
    data.mkdir()
    (data / "empty.jsonl").write_text("\n")
    (data / "no_layout.jsonl").write_text(json.dumps({"task_id": "t1", "env": "frozenlake"}) + "\n")
    (data / "chess.jsonl").write_text(json.dumps({"task_id": "t1", "env": "chess"}) + "\n")
    rows = [{"_id": "a", "question": "q?", "answer": "x", "context": [["T", ["s."]]]},
            {"_id": "b", "question": "q2?", "answer": "y", "context": [["T", 5]]}]
    (data / "hotpot_row.json").write_text(json.dumps(rows))
    (data / "hotpot_broken.json").write_text(json.dumps(rows)[:-5])
    (data / "hotpot_line.jsonl").write_text(json.dumps(rows[0]) + "\n" + '{"_id": "b", "question"\n')
    (data / "a_file").write_text("not a folder")
    verl_ckpt = root / "verl_ckpt" / "global_step_2"
    verl_ckpt.mkdir(parents=True)
    (verl_ckpt / "erl_state.json").write_text(json.dumps({"step": 2, "cursor": 4, "seed": 0}))
    (verl_ckpt / "erl_memory.json").write_text(json.dumps({"version": 1, "entries": "none"}))
    (verl_ckpt / "actor").mkdir()  # a whole checkpoint but for its memory file
    (verl_ckpt / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"")
    half = root / "verl_half" / "global_step_2"  # what verl's max_actor_ckpt_to_keep leaves of an older step
    half.mkdir(parents=True)
    (half / "erl_state.json").write_text(json.dumps({"step": 2, "cursor": 4, "seed": 0}))
    from erl.models.tiny import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()  # a Hugging Face folder for the verl cases (the model check passes)
    build_tiny_model(tok, hidden=32, layers=1, heads=2).save_pretrained(root / "tiny_hf")
    tok.save_pretrained(root / "tiny_hf")
    return root


def train_case(*extra, out="fresh"):
    return train_cli.main, lambda r: [*TINY, *SMALL, f"trainer.output_dir={r / out}", *[e.format(r=r) for e in extra]]


def eval_case(*extra):
    return eval_cli.main, lambda r: [*TINY, "eval.n=2", *[e.format(r=r) for e in extra]]


def verl_case(*extra, model="{r}/tiny_hf", experiment="frozenlake_erl"):
    """The verl trainer's entry after Hydra (`_main`): Hydra composing verl's large config
    takes seconds on a loaded 2-core machine, so it is composed before the clock starts."""
    return "verl", lambda r: [experiment, "actor_rollout_ref.rollout.name=hf", f"trainer.default_local_dir={r / 'verl_out'}",
                              *[e.format(r=r) for e in (*extra, f"actor_rollout_ref.model.path={model}")]]


def run_verl(argv: list[str]) -> tuple[object, str, float]:
    from erl.trainers.verl.config import compose

    cfg = compose(argv[0], argv[1:])
    err = io.StringIO()
    start = time.process_time()
    try:
        with contextlib.redirect_stderr(err):
            verl_main._main(cfg)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, err.getvalue(), time.process_time() - start


CASES = {
    # issue 13 item 5: values accepted silently before
    "tau above 1": (*train_case("erl.tau=5"), "erl.tau"),
    "negative tau": (*train_case("erl.tau=-1"), "erl.tau"),
    "memory_threshold above 1": (*train_case("erl.memory_threshold=7"), "erl.memory_threshold"),
    "nan temperature": (*train_case("erl.temperature=nan"), "erl.temperature"),
    "nan lr": (*train_case("trainer.lr=nan"), "trainer.lr"),
    "unknown top-level key": (*train_case("+foo=1"), "foo"),
    # a word Hydra passes as a string ("no" is true): had turned LoRA on, kept std normalisation on
    "lora enabled as a word": (*train_case("model.lora.enabled=no"), "model.lora.enabled must be true or false, got 'no'"),
    "norm_adv_by_std as a word": (*train_case("trainer.norm_adv_by_std=off"), "trainer.norm_adv_by_std must be true or false"),
    "progress as a word": (*train_case("trainer.progress=maybe"), "trainer.progress must be true or false"),
    "unknown env key": (*train_case("+env.n_tests=3"), "n_tests"),
    # tracebacks before
    "seed not a number": (*train_case("seed=abc"), "seed"),
    "n_train not a number": (*train_case("env.n_train=lots"), "env.n_train"),
    "tiny hidden not divisible": (*train_case("model.tiny.hidden=33"), "model.tiny.hidden"),
    "tiny heads zero": (*train_case("model.tiny.heads=0"), "model.tiny.heads"),
    "tiny size not a number": (*train_case("model.tiny.layers=abc"), "model.tiny.layers"),
    "tiny unknown size": (*train_case("+model.tiny.width=3"), "width"),
    "hotpotqa bad row": (*train_case("env=hotpotqa", "env.params.data_path={r}/data/hotpot_row.json"),
                                "hotpot_row.json: row 1"),
    "hotpotqa broken json": (*train_case("env=hotpotqa", "env.params.data_path={r}/data/hotpot_broken.json"),
                                   "hotpot_broken.json"),
    "hotpotqa broken jsonl line": (*train_case("env=hotpotqa", "env.params.data_path={r}/data/hotpot_line.jsonl"),
                                         "hotpot_line.jsonl:2"),
    "output folder below a file": (*train_case(out="data/a_file/run"), "trainer.output_dir"),
    "misspelt compile mode": (*train_case("trainer.rollout_compile=reduce_overhead"),
                              "trainer.rollout_compile must be true, false or a torch.compile mode"),
    "flex decode on a CPU": (*train_case("trainer.rollout_decode_attention=flex", "trainer.device=cpu"),
                             "trainer.rollout_decode_attention=flex needs a CUDA device (this run's: cpu)"),
    "compiled regions on a CPU": (*train_case("trainer.rollout_regions=true", "trainer.device=cpu"),
                                  "trainer.rollout_regions=true needs a CUDA device (this run's: cpu)"),
    "compiled regions with hf": (*train_case("trainer.rollout_regions=true", "trainer.rollout_engine=hf"),
                                 "not with rollout_engine=hf or rollout_compile"),
    "flex decode with hf": (*train_case("trainer.rollout_decode_attention=flex", "trainer.rollout_engine=hf"),
                            "not with rollout_engine=hf or rollout_compile"),
    # documented in the README: a run is never written over or mixed with another config
    "existing run without resume": (*train_case(out="run"), "already holds a run"),
    "resume with a changed config": (*train_case("resume=true", "erl.tau=0.5", out="run"), "erl.tau"),
    "resume from a wrong memory.json": (*train_case("resume={r}/bad_memory/step_1"), "memory.json"),
    # erl-eval
    "eval: task without a layout": (*eval_case("eval.tasks_file={r}/data/no_layout.jsonl"), "no_layout.jsonl:1"),
    "eval: task of an unknown env": (*eval_case("eval.tasks_file={r}/data/chess.jsonl"), "chess.jsonl:1"),
    "eval: empty task file": (*eval_case("eval.tasks_file={r}/data/empty.jsonl"), "empty.jsonl holds no tasks"),
    "eval: n not a number": (*eval_case("eval.n=some"), "eval.n"),
    "eval: unknown eval key": (*eval_case("+eval.tasks=3"), "tasks"),
    "eval: out below a file": (*eval_case("eval.out={r}/data/a_file/x.json"), "eval.out"),
    # the verl trainer: the same checks, before Ray starts
    "verl: tau above 1": (*verl_case("erl.tau=5"), "erl.tau"),
    "verl: nan temperature": (*verl_case("erl.temperature=nan"), "erl.temperature"),
    "verl: unknown top-level key": (*verl_case("+foo=1"), "foo"),
    "verl: seed not a number": (*verl_case("erl_trainer.seed=abc"), "erl_trainer.seed"),
    "verl: n_train not a number": (*verl_case("env.n_train=lots"), "env.n_train"),
    "verl: hotpotqa bad row": (*verl_case("+env.params.data_path={r}/data/hotpot_row.json", experiment="hotpotqa_erl"),
                               "hotpot_row.json: row 1"),
    "verl: output folder below a file": (*verl_case("trainer.default_local_dir={r}/data/a_file/run"),
                                         "trainer.default_local_dir"),
    "verl: wrong erl_memory.json": (*verl_case("trainer.resume_mode=resume_path",
                                               "trainer.resume_from_path={r}/verl_ckpt/global_step_2"),
                                    "erl_memory.json"),
    "verl: checkpoint without its actor files": (*verl_case("trainer.resume_mode=resume_path",
                                                            "trainer.resume_from_path={r}/verl_half/global_step_2"),
                                                 "max_actor_ckpt_to_keep"),
    "verl: no model folder": (*verl_case(model="{r}/nowhere"), "actor_rollout_ref.model.path"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_naming_it_and_changes_nothing(world, name):
    main, argv, needle = CASES[name]
    before = snapshot(world)
    if main == "verl":
        code, err, seconds = run_verl(argv(world))
    else:
        code, err, seconds = run_cli(main, argv(world), world / "scratch" / name.replace(" ", "_").replace(":", ""))
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and ": error: " in lines[0] and needle in lines[0], err
    assert seconds < 3.0, f"{name}: {seconds:.2f} s"
    assert snapshot(world) == before
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def test_read_only_output_folder_is_refused_before_the_run(world, monkeypatch):
    """chmod does not stop root, so the check's permission probe is made to say no."""
    from erl.trainers import paths

    monkeypatch.setattr(paths.os, "access", lambda path, mode: False)
    before = snapshot(world)
    main, argv = train_case(out="ro")
    code, err, _ = run_cli(main, argv(world), world / "scratch" / "ro")
    assert code == 2 and "trainer.output_dir" in err and "not writable" in err and snapshot(world) == before
