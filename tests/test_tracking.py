"""compare_step: the verdict of the GPU resume check (scripts/verl_resume_check.sh)."""

import json

import pytest

from erl.tracking import compare_step, main

BASE = {"step": 11, "tokens/generated": 1607.0, "attempt1/success": 0.125, "rows": 24.0,
        "actor/erl/pg_loss": -0.0200, "time/step": 24.8, "actor/mfu": 0.0035}


def test_same_samples_and_close_losses_reproduce_exactly():
    resumed = {**BASE, "actor/erl/pg_loss": -0.0201, "time/step": 44.8, "actor/mfu": 0.0020}
    verdict, lines = compare_step([{"step": 10}, BASE], [resumed], 11)
    # |0.0200 - 0.0201| = 1e-4 <= 1% of 0.0201; timings and mfu are not compared
    assert verdict == "exact"
    assert not any(ln.startswith(("time/step", "actor/mfu")) for ln in lines)


def test_one_token_more_or_a_loss_off_by_5_percent_differs():
    verdict, lines = compare_step([BASE], [{**BASE, "tokens/generated": 1608.0}], 11)
    assert verdict == "differs" and any("tokens/generated" in ln and "DIFFERS" in ln for ln in lines)
    verdict, _ = compare_step([BASE], [{**BASE, "actor/erl/pg_loss": -0.0210}], 11)
    assert verdict == "differs"  # 0.001 > 1% of 0.021


def test_a_control_run_sets_the_noise_level():
    resumed = {**BASE, "tokens/generated": 1627.0}        # original -> resumed: 20 tokens
    control_wide = [{**BASE, "tokens/generated": 1615.0}]  # resumed -> control: 12, 2 x 12 = 24 >= 20
    control_narrow = [{**BASE, "tokens/generated": 1630.0}]  # 3, 2 x 3 = 6 < 20
    control_same = [resumed]                               # 0: no noise shown, the gap stays a difference
    assert compare_step([BASE], [resumed], 11, control=control_wide)[0] == "noise"
    assert compare_step([BASE], [resumed], 11, control=control_narrow)[0] == "differs"
    assert compare_step([BASE], [resumed], 11, control=control_same)[0] == "differs"
    # an outcome that differs while the control shows no spread in it is not noise
    ctl = [{**control_wide[0], "attempt1/success": 0.25}]
    verdict, lines = compare_step([BASE], [{**resumed, "attempt1/success": 0.25}], 11, control=ctl)
    assert verdict == "differs" and any("attempt1/success" in ln and "DIFFERS" in ln for ln in lines)


def test_history_counters_are_not_compared_and_a_spread_eval_after_the_update_is_noise():
    """docs/gpu/ratio_rise/call18: every sampled count equal; the resumed process recorded 8 CUDA
    graphs where the original, which had met those shapes, recorded 0; the evals after the step's
    update differ in all three runs (3.3906, 3.3125, 3.2812 turns: a gap of 0.078 against a control
    spread of 0.031), because GPU updates are not bitwise reproducible."""
    row = {**BASE, "rollout/graphs_recorded": 0.0, "eval/turns": 3.3906}
    resumed = {**BASE, "rollout/graphs_recorded": 8.0, "eval/turns": 3.3125}
    control = {**resumed, "eval/turns": 3.2812}
    verdict, lines = compare_step([row], [resumed], 11, control=[control])
    assert verdict == "noise" and not any(ln.startswith("rollout/graphs_recorded") for ln in lines)
    assert any(ln.startswith("eval/turns") and "within noise" in ln for ln in lines)
    # no spread in the control: the eval's gap is a difference
    assert compare_step([row], [resumed], 11, control=[resumed])[0] == "differs"
    # a count sampled before the update gets no such allowance
    assert compare_step([{**row, "rows": 25.0}], [resumed], 11, control=[control])[0] == "differs"


def test_missing_step_or_metric_differs():
    verdict, lines = compare_step([BASE], [{**BASE, "step": 12}], 11)
    assert verdict == "differs" and "missing from the resumed run" in lines[0]
    verdict, lines = compare_step([BASE], [BASE], 11, control=[])
    assert verdict == "differs" and "missing from the control run" in lines[0]
    verdict, lines = compare_step([BASE], [{k: v for k, v in BASE.items() if k != "rows"}], 11)
    assert verdict == "differs" and any("MISSING" in ln for ln in lines)


def test_cli_exit_code(tmp_path, capsys):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    a.write_text(json.dumps(BASE) + "\n")
    b.write_text(json.dumps({**BASE, "tokens/generated": 1617.0}) + "\n")
    c.write_text(json.dumps({**BASE, "tokens/generated": 1600.0}) + "\n")
    assert main([str(a), str(a), "--step", "11"]) == 0
    assert main([str(a), str(b), "--step", "11"]) == 1
    assert "NOT reproduced" in capsys.readouterr().out
    assert main([str(a), str(b), "--step", "11", "--control", str(c)]) == 0
    assert "REPRODUCED within run-to-run noise" in capsys.readouterr().out
    # a resume check's folder: the control is read where it was made, else the strict verdict
    for run, path in (("original", a), ("resumed", b)):
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.jsonl").write_text(path.read_text())
    assert main(["--check-dir", str(tmp_path), "--step", "11"]) == 1
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "metrics.jsonl").write_text(c.read_text())
    assert main(["--check-dir", str(tmp_path), "--step", "11"]) == 0
    for bad in (["--step", "11"], [str(a), "--check-dir", str(tmp_path), "--step", "11"]):
        with pytest.raises(SystemExit):
            main(bad)


def test_resume_after_a_torn_write_drops_the_torn_line(tmp_path):
    """A run killed mid-write leaves half a line; resuming from the step-1 checkpoint must not
    crash on it, and keeps exactly the rows up to step 1."""
    import warnings

    from erl.tracking import Tracker, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "eval/success": 0.25}\n{"step": 1, "time/step": 2.0}\n'
                    '{"step": 2, "time/step": 3.0}\n{"step": 3, "time/st')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Tracker(tmp_path, loggers=[]).truncate_after(1)
    assert read_metrics(path) == [{"step": 0, "eval/success": 0.25}, {"step": 1, "time/step": 2.0}]
    assert any("metrics.jsonl:4" in str(w.message) for w in caught)


def test_a_bad_line_before_the_last_is_an_error(tmp_path):
    import pytest

    from erl.tracking import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, oops\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics(path)
