"""Episodes as text in a run's samples.jsonl: what the model wrote, what the env answered."""

import json

from erl.core.metrics import episode_record
from erl.core.types import Episode, Step, Trajectory


def test_episode_record_keeps_the_text_of_every_segment_clipped():
    a1 = Trajectory(name="attempt1", reward=0.0, steps=[
        Step(messages=[{"role": "system", "content": "rules"}, {"role": "user", "content": "grid 1"}],
             response="<answer>Left</answer>", observation="You fell."),
    ])
    refl = Trajectory(name="reflection", reward=1.0, steps=[Step(messages=[{"role": "user", "content": "why?"}],
                                                                   response="x" * 50)])
    a2 = Trajectory(name="attempt2", reward=1.0, steps=[
        Step(messages=[{"role": "user", "content": "grid 1"}], response="<answer>Up</answer>", observation="Moved."),
        Step(messages=[{"role": "user", "content": "grid 2"}], response="<answer>Right</answer>", observation=None),
    ])
    ep = Episode(id="t7:0", task={"task_id": "t7"}, trajectories=[a1, refl, a2], is_correct=True)
    rec = episode_record(ep, max_chars=25)
    assert json.loads(json.dumps(rec)) == rec  # a JSON line as it is
    assert rec["episode"] == "t7:0" and rec["task_id"] == "t7" and rec["correct"] is True
    assert [t["name"] for t in rec["trajectories"]] == ["attempt1", "reflection", "attempt2"]
    assert [t["reward"] for t in rec["trajectories"]] == [0.0, 1.0, 1.0]
    assert rec["trajectories"][0] == {"name": "attempt1", "reward": 0.0, "prompt": "grid 1",
                                      "turns": [{"response": "<answer>Left</answer>", "observation": "You fell."}]}
    assert rec["trajectories"][1]["turns"][0]["response"] == "x" * 25 + " [...]"
    assert rec["trajectories"][2]["prompt"] == "grid 1"  # the first turn's user message
    assert rec["trajectories"][2]["turns"][1] == {"response": "<answer>Right</answer>", "observation": None}


def test_a_local_run_writes_its_episodes_each_step(tmp_path):
    from test_local_trainer import base_cfg

    from erl.tracking import read_metrics
    from erl.trainers.local.run import train

    cfg = base_cfg(tmp_path, steps=2, log_episodes=3)
    train(cfg)
    rows = read_metrics(tmp_path / "erl" / "samples.jsonl")
    assert [r["step"] for r in rows] == [1, 1, 1, 2, 2, 2]  # none for the step-0 eval
    assert all(r["trajectories"][0]["name"] == "attempt1" and r["trajectories"][0]["turns"] for r in rows)
    cfg = base_cfg(tmp_path / "off", steps=1, log_episodes=0)
    train(cfg)
    assert not (tmp_path / "off" / "erl" / "samples.jsonl").exists()
