"""erl-report on hand-written run folders: every number in the table worked out by hand."""

import json

import pytest

from erl.cli.report import main

STEP_SECONDS = {"erl": 45.0, "rlvr": 30.0, "no_memory": 30.0, "no_reflection": 30.0, "my_variant": 30.0}


def write_run(folder, env, mode, seed, evals, steps, trainer="local", torn=False, model=None, params=None,
              verl_model="/models/Qwen3-4B", erl=None):
    """A run folder as the trainer writes it: eval-only row at step 0, then one row per step
    with its timings (STEP_SECONDS[mode] each), eval/success on the steps in `evals`."""
    folder.mkdir(parents=True)
    rows = [{"step": 0, "eval/success": evals[0]}] if 0 in evals else [{"step": 0}]
    for k in range(1, steps + 1):
        t = STEP_SECONDS[mode]
        rows.append({"step": k, "time/rollout": t / 3, "time/update": 2 * t / 3, "time/step": t,
                     "attempt1/success": 0.1, **({"eval/success": evals[k]} if k in evals else {})})
    text = "".join(json.dumps(r) + "\n" for r in rows) + ('{"step": 99, "eval/succ' if torn else "")
    if trainer == "local":
        cfg = {"env": {"name": env, "params": params or {}}, "erl": {"mode": mode, **(erl or {})}, "seed": seed,
               "model": {"path": "tiny", **(model or {})}, "trainer": {"total_steps": steps}}
        (folder / "config.json").write_text(json.dumps(cfg))
        (folder / "metrics.jsonl").write_text(text)
    else:  # verl: a Hydra YAML with erl_trainer, the metrics file it names
        (folder / "config.yaml").write_text(
            f"env:\n  name: {env}\n  params: {json.dumps(params or {})}\nerl:\n  mode: {mode}\n"
            f"erl_trainer:\n  seed: {seed}\n  metrics_file: m.jsonl\nactor_rollout_ref:\n  model:\n    path: {verl_model}\n")
        (folder / "m.jsonl").write_text(text)
        # a checkpoint inside it holds a model config.json but no metrics: not a run
        (folder / "global_step_1" / "actor" / "huggingface").mkdir(parents=True)
        (folder / "global_step_1" / "actor" / "huggingface" / "config.json").write_text("{}")


@pytest.fixture
def runs(tmp_path):
    r = tmp_path / "runs"
    fl = r / "fl"
    write_run(fl / "rlvr-s0", "frozenlake", "rlvr", 0, {0: 0.25, 2: 0.25, 4: 0.5}, 4)
    write_run(fl / "rlvr-s1", "frozenlake", "rlvr", 1, {0: 0.25, 2: 0.5, 4: 0.5}, 4)
    write_run(fl / "erl-s0", "frozenlake", "erl", 0, {0: 0.25, 2: 0.5, 4: 0.75}, 4)
    write_run(fl / "erl-s1", "frozenlake", "erl", 1, {0: 0.25, 2: 0.5, 4: 1.0}, 4)
    # different lengths: aligned on steps 0, 2, 4; seed 1's last line is torn
    write_run(fl / "nomem-s0", "frozenlake", "no_memory", 0, {0: 0.25, 2: 0.25, 4: 0.5}, 4)
    write_run(fl / "nomem-s1", "frozenlake", "no_memory", 1, {0: 0.25, 2: 0.25, 4: 0.25, 6: 1.0}, 6, torn=True)
    write_run(fl / "norefl-s0", "frozenlake", "no_reflection", 0, {}, 3)
    write_run(fl / "variant-s0", "frozenlake", "my_variant", 0, {0: 0.0, 4: 0.125}, 4)
    write_run(r / "sok" / "erl", "sokoban", "erl", 7, {0: 0.0, 1: 0.5}, 1, trainer="verl")
    write_run(r / "sok" / "rlvr", "sokoban", "rlvr", 7, {0: 0.0, 1: 0.25}, 1, trainer="verl")
    return tmp_path


def section(text, env):
    return text.split(f"## {env}\n", 1)[1].split("\n## ", 1)[0]


def cells(text, env, label):
    line = next(ln for ln in section(text, env).splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_numbers_plots_and_sources(runs, capsys):
    out = runs / "docs" / "results.md"
    # erl-s0 reached twice (inside runs/fl, and by another path) is still one run
    again = runs / "runs" / "sok" / ".." / "fl" / "erl-s0"
    assert main([str(runs / "runs" / "fl"), str(again), str(runs / "runs" / "sok" / "*"), "--out", str(out),
                 "--plots", str(runs / "docs" / "plots")]) == 0
    text = out.read_text()
    # rlvr: means 0.25, 0.375, 0.5 -> final 0.5, both seeds 0.5 (std 0); reaches its own 0.5 at step 4 = 4 x 30 s
    assert cells(text, "frozenlake", "rlvr") == ["rlvr", "2 (0, 1)", "0.500 ± 0.000 (0.500-0.500) [4]", "0.500 [4]",
                                                 "4", "2.0", "4", "2.0"]
    # erl: final (0.75 + 1) / 2 = 0.875, sample std sqrt(2 x 0.125^2 / 1) = 0.177; its mean is 0.5 at
    # step 2 already (2 x 45 s = 1.5 min); 4 steps x 45 s = 3.0 min
    assert cells(text, "frozenlake", "erl") == ["erl", "2 (0, 1)", "0.875 ± 0.177 (0.750-1.000) [4]", "0.875 [4]",
                                                "2", "1.5", "4", "3.0"]
    # no_memory: common steps 0, 2, 4 (seed 1's step 6 dropped): final (0.5 + 0.25) / 2 = 0.375 < 0.5;
    # the torn line is not a step; total minutes (4 + 6) x 30 s / 2 = 2.5
    assert cells(text, "frozenlake", "no_memory") == ["no_memory", "2 (0, 1)", "0.375 ± 0.177 (0.250-0.500) [4]",
                                                      "0.375 [4]", "not reached", "not reached", "4-6", "2.5"]
    assert cells(text, "frozenlake", "no_reflection")[2] == "no eval"
    # an unknown mode is its own group, after the known ones; one seed: no std
    assert cells(text, "frozenlake", "my_variant")[1:5] == ["1 (0)", "0.125 ± n/a (0.125-0.125) [4]", "0.125 [4]",
                                                            "not reached"]
    fl = section(text, "frozenlake")
    assert [ln.split("|")[1].strip() for ln in fl.splitlines() if ln.startswith("| ")][1:6] == [
        "erl", "rlvr", "no_reflection", "no_memory", "my_variant"]
    assert "aligned on the 3 eval steps all share (last: 4)" in fl and "no eval rows" in fl
    # verl runs: found through config.yaml + erl_trainer.metrics_file; the checkpoint is no run
    assert cells(text, "sokoban", "erl (verl)")[1:6] == ["1 (7)", "0.500 ± n/a (0.500-0.500) [1]", "0.500 [1]", "1",
                                                         "0.8"]
    # the paper's numbers beside ours, labelled as the paper's
    assert cells(text, "frozenlake", "erl")[:5] and "| erl | 0.875 | 0.94 | 0.66 |" in fl
    assert "| rlvr | 0.500 | 0.86 | 0.39 |" in fl and "The paper's numbers, **not from these runs**" in fl
    assert "| rlvr (verl) | 0.250 | 0.06 | 0.04 |" in section(text, "sokoban")
    # plots: one per env, cited relative to results.md; every source file named relative too
    for env in ("frozenlake", "sokoban"):
        png = runs / "docs" / "plots" / f"{env}_eval_success.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"](plots/{env}_eval_success.png)" in text
    assert "`../runs/fl/erl-s1/metrics.jsonl` (config `../runs/fl/erl-s1/config.json`)" in fl
    assert "`../runs/sok/erl/m.jsonl` (config `../runs/sok/erl/config.yaml`)" in text
    assert "global_step_1" not in text
    err = capsys.readouterr().err
    assert "nomem-s1/metrics.jsonl:8: the last line is not complete JSON" in err
    assert "## Warnings while reading" in text and "nomem-s1/metrics.jsonl:8" in text


def test_warm_starts_and_action_tags_are_their_own_experiments(runs):
    """Runs from an Early Experience stage with strict action tags are not seeds of the plain runs:
    their own rows, and 'RLVR's final level' is their own RLVR's (0.75), not the plain one's (0.5)."""
    fl = runs / "runs" / "fl"
    warm = {"model": {"init_from": "/tmp/early/frozenlake/il"}, "params": {"action_tag": True}}
    write_run(fl / "il-erl-s0", "frozenlake", "erl", 0, {0: 0.5, 2: 0.75, 4: 1.0}, 4, **warm)
    # the stage's final/ folder names the same start as the stage's folder
    write_run(fl / "il-rlvr-s0", "frozenlake", "rlvr", 0, {0: 0.5, 2: 0.5, 4: 0.75}, 4,
              model={"init_from": "/tmp/early/frozenlake/il/final"}, params={"action_tag": True})
    # the IL stage's own folder (erl-early train: config.json + metrics.jsonl) is not an RL run
    stage = fl / "early" / "il"
    stage.mkdir(parents=True)
    (stage / "config.json").write_text(json.dumps({"stage": {"name": "il"}, "model": {"path": "tiny"}}))
    (stage / "metrics.jsonl").write_text('{"step": 1, "loss/nll": 0.5}\n')
    out = runs / "docs" / "results.md"
    assert main([str(fl), "--out", str(out)]) == 0
    text = out.read_text()
    assert "early/il" not in text  # neither a row nor a warning
    # the plain groups are unchanged by the new runs
    assert cells(text, "frozenlake", "erl")[1:5] == ["2 (0, 1)", "0.875 ± 0.177 (0.750-1.000) [4]", "0.875 [4]", "2"]
    # IL -> ERL reaches IL -> RLVR's final 0.75 at step 2 (2 x 45 s = 1.5 min); IL -> RLVR at its step 4
    assert cells(text, "frozenlake", "erl [from il, action tag]") == [
        "erl [from il, action tag]", "1 (0)", "1.000 ± n/a (1.000-1.000) [4]", "1.000 [4]", "2", "1.5", "4", "3.0"]
    assert cells(text, "frozenlake", "rlvr [from il, action tag]")[4:6] == ["4", "2.0"]
    assert "| erl [from il, action tag] | 1.000 | 0.94 | 0.66 |" in section(text, "frozenlake")
    # RAFT distillation is another experiment, not a third seed of erl (RLVR distils nothing: one group)
    write_run(fl / "raft-s0", "frozenlake", "erl", 0, {0: 0.5, 4: 0.25}, 4, erl={"distill_mode": "raft"})
    write_run(fl / "rlvr-raft-s5", "frozenlake", "rlvr", 5, {0: 0.5, 4: 0.25}, 4, erl={"distill_mode": "raft"})
    assert main([str(fl), "--out", str(out)]) == 0
    text = out.read_text()
    assert cells(text, "frozenlake", "erl")[1] == "2 (0, 1)"
    assert cells(text, "frozenlake", "erl [distill raft]")[1:3] == ["1 (0)", "0.250 ± n/a (0.250-0.250) [4]"]
    assert "rlvr [distill raft]" not in text
    # verl starts from the stage's final/ folder itself: the same start, its own (verl) rows
    write_run(fl / "verl-il-erl", "frozenlake", "erl", 0, {0: 0.5, 4: 0.75}, 4, trainer="verl",
              verl_model="/tmp/early/frozenlake/il/final", params={"action_tag": True})
    assert main([str(fl), "--out", str(out)]) == 0
    text = out.read_text()
    assert cells(text, "frozenlake", "erl (verl) [from il, action tag]")[1:3] == ["1 (0)", "0.750 ± n/a (0.750-0.750) [4]"]
    assert cells(text, "frozenlake", "erl [from il, action tag]")[1] == "1 (0)"  # not a seed of the local row


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for args, msg in ([[str(tmp_path / "nothing*")], "matches no file or folder"],
                      [[str(tmp_path / "empty")], "no run folders"]):
        assert main([*args, "--out", str(tmp_path / "r.md")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("erl-report: error:") and msg in err
    write_run(tmp_path / "bad", "frozenlake", "erl", 0, {0: 0.5, 1: 0.5}, 2)
    lines = (tmp_path / "bad" / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]  # a damaged line in the middle is corruption, not a torn write
    (tmp_path / "bad" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main([str(tmp_path / "bad"), "--out", str(tmp_path / "r.md")]) == 2
    assert "metrics.jsonl:2 is not a metrics line" in capsys.readouterr().err
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"env": {"name": "frozenlake"}, "seed": 0}))
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 0, "eval/success": 0.5}\n')
    assert main([str(tmp_path / "bad"), "--out", str(tmp_path / "r.md")]) == 2
    assert "config.json: no `erl.mode`" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def write_early(folder, successes, stages, rl=None, tags=False, more_rl=()):
    """A folder as scripts/early_compare.sh leaves it: eval_<arm>.json per arm, a stage's
    metrics, the dataset manifest, and optionally an RL run from a stage as scripts/early_erl.sh
    names it (il-erl; `more_rl`: other such folders, with `rl`'s metrics)."""
    folder.mkdir(parents=True)
    env = {"name": "sokoban", **({"params": {"action_tag": True}} if tags else {})}
    for arm, success in successes.items():
        (folder / f"eval_{arm}.json").write_text(json.dumps(
            {"config": {"env": env}, "metrics": {"eval/success": success, "eval/tasks": 16.0}}))
    for stage, losses in stages.items():
        (folder / stage).mkdir()
        (folder / stage / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": i + 1, "loss/nll": x}) + "\n" for i, x in enumerate(losses)))
    (folder / "il" / "config.json").write_text(json.dumps({"data": str(folder / "data")}))
    (folder / "data").mkdir()
    (folder / "data" / "manifest.json").write_text(json.dumps({"counts": {
        "tasks": 8, "expert_states": 20, "rows_rollout": 40, "alternatives_random": 5}}))
    for name in ("il-erl", *more_rl) if rl else ():
        (folder / name).mkdir()
        (folder / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl))


def test_early_experience_rows(runs, capsys):
    """--early DIR adds the arms measured by scripts/early_compare.sh: success, stage steps and
    last loss, the RL run from a stage, the expert budget, the paper's claim; an arm without its
    eval file is left out, a folder with none is an error."""
    early = runs / "early"
    write_early(early, {"base": 0.0625, "il": 0.25, "sr": 0.1875, "iwm-il": 0.125},
                {"il": [1.5, 0.5], "sr": [2.0, 1.25, 1.0]},
                rl=[{"step": 0, "eval/success": 0.25}, {"step": 1}, {"step": 2, "eval/success": 0.375}],
                more_rl=("il-rlvr-s1", "iwm-erl", "iwm-il-rlvr", "none-rlvr"))
    out = runs / "docs" / "results.md"
    assert main([str(runs / "runs"), "--early", str(early), "--out", str(out)]) == 0
    text = out.read_text()
    part = text.split("## Early Experience warm starts: sokoban\n", 1)[1]
    assert "20 expert states of 8 tasks, 40 alternatives (5 drawn at random)" in part
    rows = [ln for ln in part.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    # each arm's RL runs by early_erl.sh's names: IWM -> IL's is iwm-erl, the base model's none-<mode>
    curve = "0.25 (step 0), 0.38 (step 2); 2 steps run"
    assert rows == [f"| base model | 0.062 | 16 | - | rlvr: {curve} |",
                    f"| IL | 0.250 | 16 | il 2 (0.500) | erl: {curve} / rlvr-s1: {curve} |",
                    f"| IWM -> IL | 0.125 | 16 | - | erl: {curve} / rlvr: {curve} |",
                    "| SR | 0.188 | 16 | sr 3 (1.000) | - |"]
    assert "9.6 points" in part and "--early" in text.split("\n")[2]
    assert (early / "compare.md").exists() is False  # erl-report only reads the folder
    from erl.early.report import main as table_main

    assert table_main([str(early)]) == 0 and (early / "compare.md").read_text().splitlines()[3] == rows[1]
    capsys.readouterr()
    (runs / "none").mkdir()
    assert main([str(runs / "runs"), "--early", str(runs / "none"), "--out", str(runs / "r2.md")]) == 2
    assert "--early" in capsys.readouterr().err and not (runs / "r2.md").exists()


def test_early_sections_name_action_tags_and_shorten_long_rl_curves(runs):
    """Two early_compare.sh folders of one env are told apart by their action tags, and an RL run
    with many evals shows its first, last and best (the earliest step at the best), not every point."""
    rl = [{"step": 4 * i, "eval/success": x} for i, x in enumerate([0.25, 0.5, 0.75, 0.5, 0.75, 0.625])]
    write_early(runs / "tags", {"il": 0.5}, {"il": [0.5]}, rl=rl, tags=True)
    out = runs / "r.md"
    assert main([str(runs / "runs"), "--early", str(runs / "tags"), "--out", str(out)]) == 0
    part = out.read_text().split("## Early Experience warm starts: sokoban, action tags\n", 1)[1]
    row = next(ln for ln in part.splitlines() if ln.startswith("| IL |"))
    assert row.endswith("| erl: 0.25 (step 0) -> 0.62 (step 20), best 0.75 (step 8); 20 steps run |")


def test_hotpotqa_is_scored_by_its_reward_as_in_the_paper(tmp_path, capsys):
    """The paper's HotpotQA numbers are rewards (exact match 1, else F1 >= 0.3), not exact-match
    success: the HotpotQA curve and its paper row read `eval/reward`; other envs keep `eval/success`."""
    run = tmp_path / "hq"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"env": {"name": "hotpotqa"}, "erl": {"mode": "erl"}, "seed": 0,
                                                 "model": {"path": "tiny"}}))
    rows = [{"step": 0, "eval/success": 0.0, "eval/reward": 0.1},
            {"step": 1, "time/step": 60.0, "eval/success": 0.0, "eval/reward": 0.25}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.md"
    assert main([str(run), "--out", str(out)]) == 0
    text = out.read_text()
    assert "`eval/reward`, the paper's HotpotQA metric" in section(text, "hotpotqa")
    assert cells(text, "hotpotqa", "erl")[2].startswith("0.250 ± n/a")  # the reward at step 1, not success 0.0
    assert "final eval reward read from the paper's figures" in text
    assert "| method | seeds | final eval reward: mean" in section(text, "hotpotqa")
    assert "| erl | 0.250 | 0.56 | 0.50 |" in text


def test_plot_tells_warm_starts_apart_and_keeps_the_legend_off_the_curves(tmp_path, monkeypatch):
    """Two ERL warm starts share colour and line style; each gets its own marker, and the one
    legend sits beside the panels (inside, it covered the curves)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from erl.report import Group, plot_env

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    one = np.array([0.1, 0.5])
    groups = [Group("frozenlake", "erl", "local", [], start=s, steps=[0, 4], mean=one, lo=one, hi=one,
                    minutes=np.array([0.0, 1.0])) for s in ("", "from il, action tag", "from iwm-il, action tag")]
    plot_env(groups, tmp_path / "p.png", "t")
    fig = kept[0]
    lines = fig.axes[0].get_lines()
    assert len({ln.get_color() for ln in lines}) == 1
    assert len({ln.get_marker() for ln in lines}) == 3
    assert [ln.get_linestyle() for ln in lines][1:] == ["-."] * 2
    assert fig.axes[0].get_legend() is None and len(fig.legends) == 1
    assert [t.get_text().rsplit(" (", 1)[0] for t in fig.legends[0].get_texts()] == [
        "erl", "erl [from il, action tag]", "erl [from iwm-il, action tag]"]


def test_run_curves_keep_the_second_attempts_visible_under_the_reflections_and_whole_steps(tmp_path, monkeypatch):
    """curves.png: with every reflection parsed, the reflections' reward equals the second attempts'
    success point for point; its line is dashed with hollow markers so the other shows through, and
    the step axes tick at whole steps (3 steps had shown 1.25 and 1.75)."""
    import matplotlib.pyplot as plt

    from erl.tracking import plot_run

    rows = [{"step": k, "attempt1/success": 0.25, "attempt2/success": 0.5, "reflection/reward": 0.5,
             "eval/success": 0.25} for k in range(3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    plot_run(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    (fig,) = figures
    lines = {ln.get_label(): ln for ln in fig.axes[0].lines}
    assert lines["reflection reward"].get_linestyle() == "--" and lines["reflection reward"].get_fillstyle() == "none"
    assert lines["attempt 2 (after reflection)"].get_linestyle() == "-"
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if 0 <= t <= 2]
        assert ticks and all(float(t).is_integer() for t in ticks)
