"""What the CLIs tell a user: the per-step summary, the bar's postfix, the run log that keeps the lines
from before its folder may be written (model fetch, loading), and the one-run unknown-key message."""

from __future__ import annotations

import asyncio
import logging

from erl.progress import RunLog, bar_postfix, gather_with_bar, log, step_summary


def test_step_summary_shows_the_time_split_and_only_the_metrics_the_step_has():
    metrics = {"time/step": 84.23, "time/rollout": 61.0, "time/update": 23.23, "attempt1/success": 0.25,
               "attempt2/success": 0.5, "reflection/rate": 0.75, "memory/size": 4.0, "loss/pg_loss": -0.0123}
    assert step_summary(3, 6, metrics) == ("step 3/6  84.2 s (rollout 61.0 + update 23.2)  succ1 0.25  succ2 0.50"
                                           "  refl 0.75  mem 4  pg -0.012")
    with_eval = step_summary(6, 6, {**metrics, "eval/success": 0.3125})
    assert with_eval.endswith("pg -0.012  eval 0.31")
    # step 0 is an eval alone; a nan (an empty segment) is left out, never printed as "nan"
    assert step_summary(0, 6, {"eval/success": 0.25, "attempt2/success": float("nan")}) == "step 0/6  eval 0.25"


def test_bar_postfix_leaves_out_an_eval_that_did_not_run():
    assert bar_postfix({"attempt1/success": 0.5, "attempt2/success": 0.25, "time/step": 12.34}) == {
        "succ1": "0.50", "succ2": "0.25", "s/step": "12.3"}
    assert bar_postfix({"eval/success": 1.0})["eval"] == "1.00"


def test_run_log_writes_the_lines_from_before_it_opened_then_the_rest(tmp_path):
    runlog = RunLog()
    try:
        log.info("model %s: loading", "tiny")  # before the run's checks passed: kept in memory
        assert not list(tmp_path.iterdir())
        runlog.open(tmp_path / "train.log")
        logging.getLogger("erl.models.registry").info("a child logger's line")
        log.info("step 1/2")
    finally:
        runlog.close()
    log.info("after close: not in the file")
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [ln.split(" ", 2)[2] for ln in lines] == ["model tiny: loading", "a child logger's line", "step 1/2"]


def test_a_run_log_that_never_opens_writes_nothing(tmp_path):
    runlog = RunLog()
    log.info("refused before any file")
    runlog.close()
    assert not list(tmp_path.iterdir()) and not any(type(h).__name__ == "_Buffer" for h in log.handlers)


def test_gather_with_bar_ticks_once_per_finished_coroutine_and_keeps_order():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    async def job(i, delay):
        await asyncio.sleep(delay)
        return i

    bar = Bar()
    assert asyncio.run(gather_with_bar([job(0, 0.02), job(1, 0.0), job(2, 0.01)], bar)) == [0, 1, 2]
    assert bar.n == 3


def test_unknown_override_is_answered_before_hydra_with_the_closest_keys():
    from erl.cli.app import unknown_override_error

    assert unknown_override_error("train", ["trainer.lr=1e-4", "env=sokoban", "env.params.max_moves=2"]) is None
    # max_moves is a Sokoban key: with FrozenLake (the default env) it is unknown
    assert unknown_override_error("train", ["env.params.max_moves=2"]).startswith(
        "unknown config key 'env.params.max_moves'")
    assert unknown_override_error("train", ["trainer.stepz=3"]).endswith("did you mean trainer.total_steps?")
    assert unknown_override_error("eval", ["eval.checkpoin=x"]).endswith("did you mean eval.checkpoint?")
    assert "erl-verl" in unknown_override_error("train", ["verl=frozenlake_erl"])
    assert unknown_override_error("train", ["+trainer.stepz=3"]) is None  # an explicit addition: our check_keys
    assert unknown_override_error("train", ["trainer.lr=("]) is None  # a syntax error: Hydra's own message
