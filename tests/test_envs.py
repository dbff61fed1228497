"""FrozenLake and Sokoban without rules: exact outcomes on hand-built layouts, the solver,
generated tasks, parsing of untrusted replies, params, task files, and a full ERL episode."""

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest

from erl.cli.tasks import main as tasks_main
from erl.core.config import ConfigError
from erl.core.interfaces import Action
from erl.envs.base import ACTION_PROMPT, load_tasks, parse_action
from erl.envs.frozenlake import FrozenLakeEnv, shortest_path
from erl.envs.registry import make_env, make_tasks, validate_env_params
from erl.envs.sokoban import SokobanEnv
from erl.envs.sokoban_solver import parse_room, solve

# Start top-left; holes at (0,2) and (1,1); the only safe way is down, down, right, right.
LAKE = {"task_id": "fl-hand", "env": "frozenlake", "memory_key": "frozenlake",
        "grid": ["SFH", "FHF", "FFG"], "max_turns": 8}
LAKE_GRID = "K - Q\n- Q -\n- - J"  # default symbols: player K, floor -, hole Q, goal J
LAKE_START = LAKE_GRID + "\n" + ACTION_PROMPT


def room_task(rows, max_turns=8):
    return {"task_id": "sk-hand", "env": "sokoban", "memory_key": "sokoban", "room": rows, "max_turns": max_turns}


# Box one step from the target, player behind it: two pushes right.
ROOM_LINE = ["#######", "#     #", "# @$ .#", "#     #", "#######"]
# Box (1,2) on the top row, target (1,4), player (1,3) between them.
ROOM_TOP = ["######", "# $@.#", "#    #", "######"]
# Box (2,2), target (1,1), player (3,4).
ROOM_TURN = ["######", "#.   #", "#  $ #", "#   @#", "######"]
# Box (2,2), target (3,4), player (2,3): pushing left sends the box to the west wall (not a corner).
ROOM_SIDE = ["######", "#    #", "# $@ #", "#   .#", "######"]


def play(env, actions):
    out = [env.step(a) for a in actions]
    return out[-1], out


# ------------------------------------------------------------------ FrozenLake


def test_frozenlake_safe_path_reaches_goal_with_reward_only_at_the_end():
    env = FrozenLakeEnv.from_dict(LAKE)
    obs, info = env.reset()
    assert obs == LAKE_START and info["success"] is False and env.idx == "fl-hand"
    (obs, _, _, info), steps = play(env, [Action("down"), "down", "right", "right"])  # rLLM's wrapper too
    assert [s[1] for s in steps] == [0.0, 0.0, 0.0, 1.0]  # sum of rewards = final reward = 1
    assert [s[2] for s in steps] == [False, False, False, True]
    assert all(s[3]["success"] is False for s in steps[:3]) and info["success"] is True
    assert obs == "You moved.\n- - Q\n- Q -\n- - K\nThe episode ended. Reward: 1"
    assert shortest_path(LAKE["grid"]) == ["down", "down", "right", "right"]


def test_frozenlake_hole_ends_with_zero():
    env = FrozenLakeEnv.from_dict(LAKE)
    env.reset()
    (obs, r, done, info), steps = play(env, ["right", "right"])  # (0,1) then the hole at (0,2)
    assert steps[0][1:3] == (0.0, False)
    assert (r, done, info["success"], info["end"]) == (0.0, True, False, "hole")
    assert obs == "You moved.\n- - K\n- Q -\n- - J\nThe episode ended. Reward: 0"
    assert "hole" not in obs.lower()  # feedback never explains
    # Stepping after the end neither raises nor pays.
    assert env.step("down")[1:3] == (0.0, True)


def test_frozenlake_edge_does_nothing_and_turns_run_out():
    env = FrozenLakeEnv.from_dict(LAKE)
    env.reset()
    for turn in range(1, 8):
        obs, r, done, info = env.step("up")  # off the top edge: nothing moves
        assert obs == "Nothing happened.\n" + LAKE_START and (r, done) == (0.0, False)
        assert info["moved"] is False and info["turn"] == turn
    obs, r, done, info = env.step("left")  # 8th turn: out of turns
    assert (r, done, info["end"]) == (0.0, True, "out_of_turns")
    assert obs.endswith("The episode ended. Reward: 0")
    env.reset()  # a reset restores the start and the turn budget
    assert env.turn == 0 and env.step("down")[2] is False


def test_frozenlake_custom_symbols_and_max_turns():
    task = dict(LAKE, symbols={"hole": "%", "player": "@"}, max_turns=2)
    env = make_env(task)
    assert env.reset()[0] == "@ - %\n- % -\n- - J\n" + ACTION_PROMPT
    assert env.step("down")[2] is False and env.step("down")[2] is True  # turn 2 of 2


# ------------------------------------------------------------------ Sokoban


def test_sokoban_push_onto_target_wins():
    env = SokobanEnv.from_dict(room_task(ROOM_LINE))
    obs, _ = env.reset()
    assert obs.splitlines()[2] == "Z - K R - J Z"
    (obs, r, done, info), steps = play(env, ["right", "right"])
    assert steps[0][1:3] == (0.0, False) and (r, done, info["success"]) == (1.0, True, True)
    assert obs.splitlines()[3] == "Z - - - K Y Z"  # grid row 2 (line 0 is feedback); Y: box on target
    assert obs.endswith("The episode ended. Reward: 1")


def test_sokoban_walls_block_the_player_and_the_box():
    env = SokobanEnv.from_dict(room_task(["#####", "#@$ #", "#  .#", "#####"]))
    start, _ = env.reset()
    for action in ("up", "left"):  # walls above and left of the player
        obs, r, done, info = env.step(action)
        assert obs == "Nothing happened.\n" + start and (r, done, info["moved"]) == (0.0, False, False)
    env.step("down")
    env.step("right")  # player (2,2) under the box
    *_, info = env.step("up")  # the box (1,2) would go into the wall (0,2)
    assert not info["moved"] and env.box == (1, 2) and env.player == (2, 2)
    obs, *_ = env.step("right")  # walk onto the target: shown as player_on_target
    assert obs.splitlines()[3] == "Z - - V Z"  # grid row 2


def test_sokoban_corner_push_is_a_deadlock():
    env = SokobanEnv.from_dict(room_task(ROOM_TOP))
    env.reset()
    obs, r, done, info = env.step("left")  # box (1,2) -> (1,1), a corner that is not the target
    assert (r, done, info["success"], info["end"]) == (0.0, True, False, "deadlock")
    assert obs.endswith("The episode ended. Reward: 0")


def test_sokoban_solver_detects_a_deadlock_that_is_not_a_corner():
    env = SokobanEnv.from_dict(room_task(ROOM_SIDE))
    env.reset()
    assert not env.step("up")[2]  # a plain walk is never a deadlock
    env.step("down")
    _, _, done, info = env.step("left")  # box -> (2,1): on the west wall, the target is in column 4
    assert (done, info["end"]) == (True, "deadlock") and env.box == (2, 1)


def test_solver_move_counts():
    # ROOM_LINE: two pushes right -> 2.
    assert solve(parse_room(ROOM_LINE)) == ["right", "right"]
    # ROOM_TOP: the player must get west of the box: down, left, left, up (4), then two pushes -> 6.
    assert len(solve(parse_room(ROOM_TOP))) == 6
    # ROOM_TURN: >= 3 pushes (box 1 up, 2 left); the first push needs 1 step to get behind the box;
    # switching between up- and left-pushes needs 2 steps around the box: 1 + 3 + 2 = 6, achieved
    # by up(to 2,4) left left (box at 2,1) down left up.
    path = solve(parse_room(ROOM_TURN))
    assert len(path) == 6
    env = SokobanEnv.from_dict(room_task(ROOM_TURN))
    env.reset()
    assert play(env, path)[0][1] == 1.0
    assert solve(parse_room(ROOM_TURN), max_moves=5) is None
    # A box already in a non-target corner: no solution at all.
    assert solve(parse_room(["#####", "#$ .#", "# @ #", "#####"])) is None


# ------------------------------------------------------------------ generated tasks


def replay(task):
    env = make_env(task)
    env.reset()
    return play(env, task["solution"])[0]


@pytest.mark.parametrize("name,params", [
    ("frozenlake", {}),
    ("frozenlake", {"size_min": 7, "size_max": 9, "hole_prob": 0.5, "max_turns": 6}),
    ("sokoban", {}),
    ("sokoban", {"size_min": 7, "size_max": 9, "wall_prob": 0.3, "min_moves": 4, "max_moves": 6, "max_turns": 6}),
])
def test_generated_tasks_are_solvable_within_limits(name, params):
    full = (FrozenLakeEnv if name == "frozenlake" else SokobanEnv).validate_params(params)
    tasks = [t for seed in range(50) for split in ("train", "val")
             for t in make_tasks(name, 2, seed=seed, split=split, **params)]
    assert len(tasks) == 200
    for task in tasks:
        assert full["size_min"] <= task["size"] <= full["size_max"]
        layout = task.get("grid") or task.get("room")
        assert len(layout) == task["size"] and all(len(row) == task["size"] for row in layout)
        if name == "frozenlake":
            assert len(task["solution"]) == len(shortest_path(layout)) <= full["max_turns"]
        else:
            assert layout[0] == layout[-1] == "#" * task["size"]
            assert full["min_moves"] <= len(solve(parse_room(layout))) == len(task["solution"]) <= full["max_moves"]
        _, r, done, info = replay(task)
        assert (r, done, info["success"]) == (1.0, True, True)


@pytest.mark.parametrize("name", ["frozenlake", "sokoban"])
def test_generation_is_reproducible_and_splits_are_disjoint(name):
    a = make_tasks(name, 40, seed=3)
    assert a == make_tasks(name, 40, seed=3)
    assert make_tasks(name, 10, seed=3) == a[:10]  # task i does not depend on n
    assert a != make_tasks(name, 40, seed=4)
    assert len({t["task_id"] for t in a}) == 40 and all(t["memory_key"] == name for t in a)
    key = "grid" if name == "frozenlake" else "room"
    train = {tuple(t[key]) for t in make_tasks(name, 300, seed=0, split="train")}
    val = {tuple(t[key]) for t in make_tasks(name, 100, seed=0, split="val")}
    assert train and val and not train & val
    json.dumps(a)  # plain JSON


def test_generation_is_the_same_in_another_process():
    code = ("import json; from erl.envs.registry import make_tasks; "
            "print(json.dumps(make_tasks('sokoban', 5, seed=9, split='val') + make_tasks('frozenlake', 5, seed=9)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert json.loads(out) == make_tasks("sokoban", 5, seed=9, split="val") + make_tasks("frozenlake", 5, seed=9)


# ------------------------------------------------------------------ what the model is told


@pytest.mark.parametrize("env_cls", [FrozenLakeEnv, SokobanEnv])
def test_system_prompt_names_only_the_actions(env_cls):
    task = make_tasks(env_cls.name, 1)[0]
    prompt = env_cls.system_prompt(task).lower()
    words = set(re.findall(r"[a-z]+", prompt))
    for word in ("goal", "hole", "holes", "box", "target", "wall", "walls", "player", "floor", "push",
                 "avoid", "reward", "frozen", "lake", "sokoban", "ice", "win", "symbol", "symbols", "means"):
        assert word not in words, word
    for action in ("up", "down", "left", "right"):
        assert action in prompt
    assert "8 turns" in prompt
    for char in set(task["symbols"].values()) - {"-"}:
        assert f" {char.lower()} " not in f" {prompt} "  # no symbol is explained


def test_action_parsing():
    assert parse_action("I think LEFT. Then again... down") == "down"  # the last action word
    assert parse_action("up <action> Right </action> down") == "right"  # the tag wins
    assert parse_action("<action>jump</action> up") is None  # a bad tag is not rescued
    assert parse_action("upward setup go_up") is None  # only standalone words
    assert parse_action(b"down\xff") == "down"
    assert parse_action("<action>up") == "up"  # an unclosed tag is just text
    assert parse_action("left " + "x" * 100_000) is None  # only the tail of a huge reply is read
    assert parse_action("x" * 100_000 + " left") == "left"


@pytest.mark.parametrize("name", ["frozenlake", "sokoban"])
def test_action_tag_makes_only_tagged_replies_moves(name):
    """env.params.action_tag=true: the word salad an RL policy drifts into under the loose parse
    (its last direction word scores) is an invalid action; the tag still moves; the prompt and the
    feedback say so; default task dicts are unchanged (no action_tag field)."""
    salad = "Your up your down down your right"
    assert parse_action(salad) == "right" and parse_action(salad, require_tag=True) is None
    assert parse_action("so <action>left</action>", require_tag=True) == "left"
    plain, tagged = make_tasks(name, 2), make_tasks(name, 2, action_tag=True)
    assert all("action_tag" not in t for t in plain) and all(t.pop("action_tag") is True for t in tagged)
    assert tagged == plain  # same layouts, only the field differs
    task = {**plain[0], "action_tag": True}
    assert "a reply without that tag is not a move" in make_env(task).system_prompt(task)
    assert "You may write it" in make_env(plain[0]).system_prompt(plain[0])
    env = make_env(task)
    env.reset()
    obs, _, _, info = env.step(salad)
    assert obs.startswith("Invalid action ") and "Valid actions: <action>up</action>, <action>down</action>" in obs
    assert (info["valid"], env.turn) == (False, 1)
    loose = make_env(plain[0])
    loose.reset()
    assert loose.step(salad)[3]["valid"] is True  # the loose parse read "right"
    _, _, _, info = env.step("<action>up</action>")
    assert info["valid"] is True and info["action"] == "up"
    with pytest.raises(ConfigError, match="env.params.action_tag must be true or false, got 'yes'"):
        make_tasks(name, 1, action_tag="yes")


@pytest.mark.parametrize("reply", ["", None, 42, b"\xff\xfe", "\ud800", "x" * 100_000, "jump!", "upward",
                                   "<action>jump</action> up", "<action></action>"])
def test_garbage_replies_cost_a_turn_and_move_nothing(reply):
    for task in (LAKE, room_task(ROOM_LINE)):
        env = make_env(task)
        start, _ = env.reset()
        obs, r, done, info = env.step(reply)
        assert obs.startswith("Invalid action ") and "Valid actions: up, down, left, right." in obs
        assert obs.endswith("\n" + start) and len(obs) < len(start) + 120
        assert (r, done, info["valid"], info["success"], env.turn) == (0.0, False, False, False, 1)


# ------------------------------------------------------------------ params


@pytest.mark.parametrize("name,params,field", [
    ("frozenlake", {"size_max": 12}, "env.params.size_max must be an integer in 2..9, got 12"),
    ("frozenlake", {"size_min": True}, "env.params.size_min"),
    ("frozenlake", {"size_min": 4, "size_max": 3}, "env.params.size_max (3) must be >= env.params.size_min (4)"),
    ("frozenlake", {"hole_prob": 0.9}, "env.params.hole_prob"),
    ("frozenlake", {"holes": 0.1}, "unknown key(s) ['holes']"),
    ("frozenlake", {"max_turns": 0}, "env.params.max_turns"),
    ("frozenlake", {"symbols": {"hole": "ab"}}, "env.params.symbols.hole must be a single visible character"),
    ("frozenlake", {"symbols": {"hole": "-"}}, "share the character '-'"),
    ("frozenlake", {"symbols": {"box": "x"}}, "unknown role(s) ['box']"),
    ("frozenlake", {"symbols": "abc"}, "env.params.symbols must be a mapping"),
    ("sokoban", {"size_min": 4}, "env.params.size_min must be an integer in 5..9, got 4"),
    ("sokoban", {"wall_prob": "lots"}, "env.params.wall_prob"),
    ("sokoban", {"max_moves": 9}, "env.params.max_moves (9) must be <= env.params.max_turns (8)"),
    ("sokoban", {"min_moves": 5, "max_moves": 4}, "env.params.min_moves (5) must be <="),
    ("chess", {}, "env.name: unknown environment 'chess'"),
])
def test_bad_params_name_the_field(name, params, field):
    with pytest.raises(ConfigError) as e:
        validate_env_params(name, params)
    assert field in str(e.value)
    if name != "chess":
        with pytest.raises(ConfigError):
            make_tasks(name, 1, **params)


def test_bad_split_and_count():
    with pytest.raises(ConfigError, match="split"):
        make_tasks("frozenlake", 1, split="test")
    with pytest.raises(ConfigError, match="n "):
        make_tasks("frozenlake", -1)


# ------------------------------------------------------------------ task files


def compose_train(overrides):
    from erl.cli.app import compose

    return compose(overrides)


def test_erl_tasks_writes_files_that_load_back(tmp_path, capsys):
    out = tmp_path / "fl"
    rc = tasks_main(["write", "frozenlake", "--n-train", "7", "--n-val", "3", "--seed", "5", "--out", str(out),
                     "--param", "size_max=3", "--param", "symbols.hole=#"])
    assert rc == 0
    # erl-train's env section (configs/local/env/frozenlake.yaml, erl.max_turns 4) under the --params
    params = {"size_min": 2, "size_max": 3, "start_goal": "random", "hole_prob": 0.2, "max_turns": 4,
              "symbols": {"hole": "#"}, "action_tag": False}
    assert load_tasks(out / "train.jsonl") == make_tasks("frozenlake", 7, seed=5, split="train", **params)
    assert load_tasks(out / "val.jsonl") == make_tasks("frozenlake", 3, seed=5, split="val", **params)
    assert "7 tasks" in capsys.readouterr().out
    assert tasks_main(["show", str(out / "val.jsonl"), "--n", "1"]) == 0
    shown = capsys.readouterr().out
    assert "frozenlake-val-00000" in shown and "[system] You are playing" in shown

    assert tasks_main(["write", "frozenlake", "--out", str(out), "--param", "size_max=12"]) == 2
    assert "env.params.size_max" in capsys.readouterr().err


def test_erl_tasks_writes_the_tasks_erl_train_makes(tmp_path, capsys):
    """Without options, the files hold erl-train's tasks: its env section's params, counts (256 / 64)
    and seed. They had come from the env class's defaults (FrozenLake size_max 4, max_turns 8;
    Sokoban max_moves 8), and matched none of a run's 16 eval tasks."""
    from erl.trainers.local.run import build

    for env in ("frozenlake", "sokoban"):
        out = tmp_path / env
        assert tasks_main(["write", env, "--out", str(out)]) == 0
        val = load_tasks(out / "val.jsonl")
        assert len(load_tasks(out / "train.jsonl")) == 256 and len(val) == 64
        cfg = compose_train([f"env={env}", "model=tiny", "trainer.eval_tasks=16"])
        cfg["trainer"]["output_dir"] = str(tmp_path / f"run-{env}")
        _, made = build(cfg)
        assert made["val"] == val[:16]
    capsys.readouterr()


def test_load_tasks_errors_name_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"task_id": "a", "env": "frozenlake"}\n\n{"env": "frozenlake"}\n')
    with pytest.raises(ConfigError, match=r"t\.jsonl:3: task has no 'task_id'"):
        load_tasks(path)
    path.write_text('{"task_id": "a", "env": "x"}\nnot json\n')
    with pytest.raises(ConfigError, match=r":2: not valid JSON"):
        load_tasks(path)
    path.write_text('{"task_id": "a", "env": "x"}\n{"task_id": "a", "env": "x"}\n')
    with pytest.raises(ConfigError, match=r":2: duplicate task_id 'a' \(first on line 1\)"):
        load_tasks(path)


# ------------------------------------------------------------------ ERL end to end


def test_erl_workflow_on_frozenlake():
    from erl.models.tiny import build_tiny_tokenizer
    from erl.rollout.scripted import ScriptedPolicy
    from erl.workflow.erl_workflow import ErlWorkflow
    from erl.workflow.factories import chat_agent_for

    tok = build_tiny_tokenizer()

    def knows_the_path(task):
        def script(prompt, i):
            turn = prompt.count("<|im_start|>assistant") - 1  # replies already given in this attempt
            return f"Next: <action>{task['solution'][turn]}</action>"
        return script

    def reckless_until_told(prompt, i):
        if "## The attempt, turn by turn" in prompt:
            return "<prompt>Go down twice, then right twice.</prompt>"
        turn = prompt.count("<|im_start|>assistant") - 1
        return ["down", "down", "right", "right"][turn] if "Go down twice" in prompt else "right"

    wf = ErlWorkflow(chat_agent_for, make_env, ScriptedPolicy(tok, knows_the_path(LAKE | {"solution":
                     ["down", "down", "right", "right"]})))
    ep = asyncio.run(wf.run(LAKE, "fl:0"))
    assert [t.name for t in ep.trajectories] == ["attempt1"] and ep.is_correct
    assert ep.trajectories[0].reward == 1.0 and ep.trajectories[0].info["turns"] == 4
    first_prompt = wf.policy.calls[0]
    assert FrozenLakeEnv.system_prompt(LAKE) in first_prompt and LAKE_START in first_prompt

    wf = ErlWorkflow(chat_agent_for, make_env, ScriptedPolicy(tok, reckless_until_told))
    ep = asyncio.run(wf.run(LAKE, "fl:1"))
    # right, right: into the hole at (0,2) -> r1 = 0; the reflection leads attempt 2 to the goal -> r2 = 1
    assert [(t.name, t.reward) for t in ep.trajectories] == [
        ("attempt1", 0.0), ("reflection", 1.0), ("attempt2", 1.0), ("distill", 1.0)]
    a1 = ep.trajectories[0]
    assert a1.info["turns"] == 2 and a1.steps[-1].observation.endswith("Reward: 0")

    # Generated tasks: the path-knowing policy solves each on the first attempt.
    for task in make_tasks("frozenlake", 5, seed=1, split="val"):
        wf = ErlWorkflow(chat_agent_for, make_env, ScriptedPolicy(tok, knows_the_path(task)))
        assert asyncio.run(wf.run(task, task["task_id"])).trajectories[0].reward == 1.0


def test_frozenlake_corners_layout_and_its_turn_limit():
    tasks = make_tasks("frozenlake", 20, seed=3, size_min=2, size_max=3, start_goal="corners", max_turns=4)
    for t in tasks:
        n = t["size"]
        assert t["grid"][0][0] == "S" and t["grid"][n - 1][n - 1] == "G"
        assert len(t["solution"]) == 2 * (n - 1)  # Manhattan distance: no shorter way round
    with pytest.raises(ConfigError, match="start_goal"):
        validate_env_params("frozenlake", {"start_goal": "middle"})
    with pytest.raises(ConfigError, match="needs 8 moves"):
        validate_env_params("frozenlake", {"start_goal": "corners", "size_min": 5, "size_max": 5, "max_turns": 6})


def test_load_tasks_refuses_a_task_its_env_cannot_play(tmp_path):
    """A task without its layout used to load, and fail mid-evaluation with a KeyError."""
    good = make_tasks("frozenlake", 1, seed=0, split="val")[0]
    path = tmp_path / "t.jsonl"
    lines = [json.dumps(good), json.dumps({"task_id": "b", "env": "frozenlake"})]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"t\.jsonl:2: task 'b' is not a playable frozenlake task"):
        load_tasks(path)
    path.write_text(lines[0] + "\n" + json.dumps({"task_id": "c", "env": "chess"}) + "\n")
    with pytest.raises(ConfigError, match=r"t\.jsonl:2: env.name: unknown environment 'chess'"):
        load_tasks(path)
    path.write_text(lines[0] + "\n")
    assert load_tasks(path) == [good]


def test_an_environment_named_by_its_import_path_trains_without_registration(tmp_path, monkeypatch):
    """docs/architecture.md: an env from your own package reaches erl-train and verl's workers by its
    import path (register_env runs only in the caller's process, which a CLI run never is). Its tasks
    carry that path, so a process that has not imported it makes their env; a path that does not
    import, or a class that is not an environment, is a ConfigError naming it."""
    from erl.envs import registry
    from erl.trainers.local.run import train

    (tmp_path / "toy_lake.py").write_text(
        "from erl.envs.frozenlake import FrozenLakeEnv\n\n\nclass Lake(FrozenLakeEnv):\n    name = 'mylake'\n\n\n"
        "class NotAnEnv:\n    name = 'x'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tasks = registry.make_tasks("toy_lake:Lake", 3, size_max=2)
    assert {t["env"] for t in tasks} == {"toy_lake:Lake"} and "toy_lake:Lake" not in registry.ENVS
    assert type(registry.make_env(tasks[0])).__name__ == "Lake"
    cfg = {"seed": 0, "resume": False,
           "erl": {"n_attempt": 2, "max_turns": 2, "max_new_tokens": 4, "max_reflection_tokens": 4,
                   "reflection_require_tag": False},
           "trainer": {"total_steps": 1, "tasks_per_step": 1, "eval_tasks": 1, "output_dir": str(tmp_path / "run"),
                       "loggers": ["console"], "progress": False},
           "env": {"name": "toy_lake:Lake", "n_train": 2, "n_val": 1, "params": {"size_max": 2, "max_turns": 2}},
           "model": {"path": "tiny", "tiny": {"hidden": 32, "layers": 1, "heads": 2}}}
    assert "attempt1/success" in train(cfg)
    with pytest.raises(ConfigError, match=r"env.name: cannot import 'toy_lake:Nope' \(AttributeError"):
        registry.env_class("toy_lake:Nope")
    with pytest.raises(ConfigError, match=r"lacks \['system_prompt', 'from_dict', 'make_tasks', 'validate_params'\]"):
        registry.env_class("toy_lake:NotAnEnv")
    with pytest.raises(ConfigError, match=r"unknown environment 'atari'.*or a class by its import path"):
        registry.env_class("atari")
    with pytest.raises(TypeError, match=r"register_env\('x'\): 'NotAnEnv' lacks \['system_prompt'"):
        registry.register_env("x", __import__("toy_lake").NotAnEnv)
    assert "x" not in registry.ENVS
