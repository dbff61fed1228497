"""The README's first lines as a new user runs them: `erl-train`, then the README's `erl-eval`
example on the checkpoint it wrote, in a fresh folder, through the console entry points. The
tiny model stands in for SmolLM2 (too slow for CI), at the default run's 6 steps, so the
README's example path is used exactly as written. Checked: the files and messages the README
promises, nothing stray in the current folder, and the refusals (a missing checkpoint, an
existing run, a typo) that must say what is wrong without touching the run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# the tiny model in the default run's shape, at sizes that keep a step near a second
TINY = ["model=tiny", "model.tiny.hidden=32", "model.tiny.layers=1", "model.tiny.heads=2",
        "trainer.tasks_per_step=1", "trainer.eval_tasks=2", "env.n_train=2", "env.n_val=2", "erl.n_attempt=2",
        "erl.max_turns=1", "erl.max_new_tokens=4", "erl.max_reflection_tokens=4", "erl.reflection_require_tag=false"]


def _cli(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The console entry point (`erl-train` is `erl.cli.train:main`), run as the user's shell would."""
    code = f"import sys; from erl.cli.{module} import main; sys.argv[0] = 'erl-{module}'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], check=False, cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _readme_commands() -> tuple[str, str, list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    main_cmd, test_cmd = blocks[0].strip(), blocks[1].replace("\\\n", " ").strip()
    eval_line = next(ln for ln in README.splitlines() if ln.startswith("erl-eval eval.checkpoint="))
    return main_cmd, test_cmd, shlex.split(eval_line.split("#")[0])


def test_readme_first_lines_are_one_main_command_and_ci_test_command():
    main_cmd, test_cmd, _ = _readme_commands()
    assert "\n" not in main_cmd and main_cmd.split("#")[0].strip().endswith("&& erl-train")
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r'pip install -e ("[^"]+")', test_cmd).group(1)
    assert f"-e {install}" in ci and re.search(r"^pytest -q$", ci, flags=re.MULTILINE)  # CI runs exactly this
    assert '"torch==2.13.0"' in main_cmd and '"torch==2.13.0"' in ci  # one torch for both


def test_readme_commands_as_a_user_runs_them(tmp_path):
    _, _, eval_cmd = _readme_commands()
    assert eval_cmd[0] == "erl-eval"

    train = _cli("train", TINY, tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    out = tmp_path / "outputs" / "frozenlake-erl"  # the folder the README names
    assert "erl-train: done -> outputs/frozenlake-erl" in train.stdout
    for promised in ("metrics.jsonl", "train.log", "curves.png", "config.json", "tensorboard"):
        assert (out / promised).exists(), promised
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # nothing stray in the current folder
    assert not (out / "hydra").exists()  # Hydra writes nothing into the run folder
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert steps == [0, 1, 2, 3, 4, 5, 6]  # the default run: eval at step 0, then 6 steps
    # one progress line per step on the console and in train.log, no placeholder for a missing eval
    log = (out / "train.log").read_text()
    for k in range(1, 7):
        line = next(ln for ln in log.splitlines() if f" step {k}/6 " in ln)
        assert "rollout" in line and "update" in line and "succ1" in line, line
        assert ("eval" in line) == (k in (3, 6)), line  # trainer.eval_every: 3
        assert f"step {k}/6" in train.stderr
    assert "nan" not in log and "nan" not in train.stderr
    assert "step 0: eval before training on 2 tasks" in log and "done in" in log

    # the README's erl-eval example, word for word (the checkpoint brings the tiny model along)
    assert (out / "checkpoints" / Path(eval_cmd[1].split("=", 1)[1]).name).is_dir()
    ev = _cli("evaluate", eval_cmd[1:], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "eval/success" in ev.stdout and "2 frozenlake tasks" in ev.stderr  # the run's eval_tasks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # no evaluate.log, no .hydra

    # refusals: a clear message, and the run folder byte for byte as it was
    before = _snapshot(out)
    missing = _cli("evaluate", ["eval.checkpoint=outputs/frozenlake-erl/checkpoints/step_8"], tmp_path)
    assert missing.returncode == 2
    assert "step_8 does not exist; checkpoints in outputs/frozenlake-erl/checkpoints: step_6" in missing.stderr
    again = _cli("train", TINY, tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    typo = _cli("train", [*TINY, "trainer.stepz=3"], tmp_path)
    assert typo.returncode == 2 and "did you mean trainer.total_steps?" in typo.stderr
    bad = _cli("train", [*TINY, "trainer.output_dir=outputs/new", "trainer.lr=-1"], tmp_path)
    assert bad.returncode == 2 and "trainer.lr must be a finite number >= 0" in bad.stderr
    assert _snapshot(out) == before
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["frozenlake-erl"]  # no outputs/new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]


@pytest.mark.parametrize("prog", ["train", "evaluate"])
def test_help_lists_only_what_the_program_accepts(tmp_path, prog):
    shown = _cli(prog, ["--help"], tmp_path)
    assert shown.returncode == 0
    groups = shown.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert sorted(re.findall(r"^(\w+):", groups, flags=re.MULTILINE)) == ["env", "erl", "model", "preset", "trainer"]
    wrong = _cli("train", ["verl=frozenlake_erl"], tmp_path)
    assert wrong.returncode == 2 and "erl-verl" in wrong.stderr
