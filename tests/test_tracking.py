"""compare_step: the verdict of the GPU resume check (scripts/verl_resume_check.sh)."""

import json

from erl.tracking import compare_step, main

BASE = {"step": 11, "tokens/generated": 1607.0, "attempt1/success": 0.125, "rows": 24.0,
        "actor/erl/pg_loss": -0.0200, "time/step": 24.8, "actor/mfu": 0.0035}


def test_same_samples_and_close_losses_reproduce():
    resumed = {**BASE, "actor/erl/pg_loss": -0.0201, "time/step": 44.8, "actor/mfu": 0.0020}
    ok, lines = compare_step([{"step": 10}, BASE], [resumed], 11)
    # |0.0200 - 0.0201| = 1e-4 <= 1% of 0.0201; timings and mfu are not compared
    assert ok
    assert not any(ln.startswith(("time/step", "actor/mfu")) for ln in lines)


def test_one_token_more_or_a_loss_off_by_5_percent_fails():
    ok, lines = compare_step([BASE], [{**BASE, "tokens/generated": 1608.0}], 11)
    assert not ok and any("tokens/generated" in ln and "DIFFERS" in ln for ln in lines)
    ok, _ = compare_step([BASE], [{**BASE, "actor/erl/pg_loss": -0.0210}], 11)
    assert not ok  # 0.001 > 1% of 0.021


def test_missing_step_or_metric_fails():
    ok, lines = compare_step([BASE], [{**BASE, "step": 12}], 11)
    assert not ok and "missing from the second run" in lines[0]
    ok, lines = compare_step([BASE], [{k: v for k, v in BASE.items() if k != "rows"}], 11)
    assert not ok and any("MISSING" in ln for ln in lines)


def test_cli_exit_code(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(BASE) + "\n")
    b.write_text(json.dumps({**BASE, "attempt1/success": 0.0}) + "\n")
    assert main([str(a), str(a), "--step", "11"]) == 0
    assert main([str(a), str(b), "--step", "11"]) == 1
    assert "NOT reproduced" in capsys.readouterr().out
