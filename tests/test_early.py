"""Early Experience data: expert trajectories, alternatives, next states, rationales, masks, bad input.

The hand-made grid (S start, F floor, H hole, G goal; shown as K, -, Q, J):
    S F
    H G
Its only shortest path is right, down (down first falls into the hole).
"""

import asyncio

import pytest

from erl.core.config import ConfigError
from erl.early import prompts
from erl.early.build import BuildConfig, build_records
from erl.early.data import read_records, record_sample, stage_records, write_dataset
from erl.early.experts import SOLVERS, expert_trajectory
from erl.envs.base import ACTIONS
from erl.models.chat import ChatTokenizer
from erl.models.tiny import build_tiny_tokenizer
from erl.rollout.scripted import ScriptedPolicy

TASK = {"task_id": "hand", "env": "frozenlake", "grid": ["SF", "HG"], "max_turns": 4}
ASK = "Your action (up, down, left or right):"
S0 = f"K -\nQ J\n{ASK}"
S1 = f"You moved.\n- K\nQ J\n{ASK}"
S2 = "You moved.\n- -\nQ K\nThe episode ended. Reward: 1"
# every action's outcome from s0 (player top-left) and s1 (player top-right), worked out on the grid
NEXT = {
    0: {"up": f"Nothing happened.\n{S0}", "left": f"Nothing happened.\n{S0}",
        "down": "You moved.\n- -\nK J\nThe episode ended. Reward: 0"},
    1: {"up": f"Nothing happened.\n- K\nQ J\n{ASK}", "right": f"Nothing happened.\n- K\nQ J\n{ASK}",
        "left": f"You moved.\n{S0}"},
}


def replies(*texts):
    """Call i gets texts[i]; later calls (the rationale prompts) get a rationale naming their index."""
    return lambda prompt, i: texts[i] if i < len(texts) else f"Rationale {i}: J is the goal. <action>left</action>"


def build(policy, tasks=(TASK,), **cfg):
    return asyncio.run(build_records(list(tasks), policy, BuildConfig(**cfg)))


def test_expert_trajectory_of_the_hand_grid():
    steps = expert_trajectory(TASK)
    assert [(s.index, s.state, s.action, s.next_state) for s in steps] == [(0, S0, "right", S1), (1, S1, "down", S2)]


def test_alternatives_differ_from_the_expert_and_next_states_are_the_envs():
    tok = build_tiny_tokenizer()
    # round 1 asks k=2 per state, states in order: s0 gets the expert's own action (refused) and up;
    # s1 gets an unparseable reply (refused) and left. Round 2 asks once per state: s0 repeats up
    # (refused), s1 names the expert's down (refused). The missing one per state is drawn at random.
    policy = ScriptedPolicy(tok, replies("<action>right</action>", "I go up", "???", "left", "up", "down"))
    out, stats = build(policy, k=2, max_rounds=2)
    assert (stats["policy_replies"], stats["replies_invalid"], stats["replies_expert_action"],
            stats["replies_duplicate"], stats["alternatives_policy"], stats["alternatives_random"]) == (6, 1, 2, 1, 2, 2)
    rows = out["rollout"]
    assert [(r["step"], r["source"]) for r in rows] == [(0, "policy"), (0, "random"), (1, "policy"), (1, "random")]
    assert rows[0]["action"] == "up" and rows[2]["action"] == "left"
    assert rows[1]["action"] in ("down", "left") and rows[3]["action"] in ("up", "right")
    for r in rows:
        assert r["action"] != r["expert_action"]
        assert r["next_state"] == NEXT[r["step"]][r["action"]]
        assert r["expert_next_state"] == [S1, S2][r["step"]]
        assert r["done"] == (r["action"] == "down" and r["step"] == 0)
    # the policy saw exactly what the RL agent sees at a first turn: system prompt + the state
    assert policy.calls[0] == tok.apply_chat_template(prompts.policy_messages(TASK, S0), tokenize=False,
                                                      add_generation_prompt=True)
    assert [r["messages"][-1]["content"] for r in out["expert"]] == ["<action>right</action>", "<action>down</action>"]
    assert [r["messages"][-1]["content"] for r in out["iwm"]] == [r["next_state"] for r in rows]


def test_action_tag_tasks_build_with_strict_replies():
    """env.params.action_tag=true: the expert still plays (it speaks the tagged form), and a
    policy reply counts only when the env would take it: 'I go up' is no move there."""
    tagged = {**TASK, "action_tag": True}
    assert [s.action for s in expert_trajectory(tagged)] == ["right", "down"]
    policy = ScriptedPolicy(build_tiny_tokenizer(), replies("I go up", "<action>up</action>"))
    out, stats = build(policy, tasks=(tagged,), k=1, max_rounds=1, max_new_tokens=64)  # the tiny tokenizer spells tags out
    assert (stats["replies_invalid"], stats["alternatives_policy"], stats["alternatives_random"]) == (1, 1, 1)
    rows = out["rollout"]
    assert [(r["step"], r["source"]) for r in rows] == [(0, "random"), (1, "policy")]
    assert rows[1]["action"] == "up" and rows[1]["next_state"].startswith("Nothing happened.")


def test_rehearsal_records_are_ercs_reflection_request_answered_by_the_policy():
    """early.reflections: for each alternative that failed, ERL's own reflection request about that
    move (the same renderer as the workflow's), answered by the policy; the answer is the target."""
    from erl.core.reflection import REFLECTION_SYSTEM

    policy = ScriptedPolicy(build_tiny_tokenizer(), lambda prompt, i: f"Reflection {i}: K is you, J is the goal."
                            if "An agent attempted a task" in prompt else "I go up")
    out, stats = build(policy, k=1, max_rounds=1, rationales=False, reflections=True)
    rows = out["rollout"]
    # s0's alternative up: nothing happens (not a success); s1's: random among up/right, not the goal
    assert rows[0]["action"] == "up" and not any(r["end"] == "success" for r in rows)
    refl = out["reflect"]
    assert [(r["step"], r["alt_action"]) for r in refl] == [(r["step"], r["action"]) for r in rows]
    first = refl[0]["messages"]
    assert first[0] == {"role": "system", "content": REFLECTION_SYSTEM}
    user = first[1]["content"]
    assert "Agent: <action>up</action>" in user and f"Environment: {NEXT[0]['up']}" in user
    assert "Reward: 0" in user and S0.split("\n")[0] in user
    assert first[2]["role"] == "assistant" and first[2]["content"].startswith("Reflection ")
    assert stats["rows_reflect"] == 2 and stats["reflections_empty"] == 0
    # off by default: no records, no policy calls for them
    out2, stats2 = build(ScriptedPolicy(build_tiny_tokenizer(), replies("up", "left")), k=1, max_rounds=1,
                         rationales=False)
    assert out2["reflect"] == [] and stats2["rows_reflect"] == 0


def test_rationale_prompt_shows_both_outcomes_and_sr_target_ends_with_the_expert_action():
    tok = build_tiny_tokenizer()
    policy = ScriptedPolicy(tok, replies("up", "left", "left", "up"))  # round 1 fills k=2 for both states
    out, stats = build(policy, k=2, max_rounds=1)
    assert stats["alternatives_random"] == 0 and len(policy.calls) == 4 + 4  # 4 actions, 4 rationales
    first = policy.calls[4]  # the rationale for (s0, up)
    assert S0 in first and S1 in first and NEXT[0]["up"] in first
    assert "<action>right</action>" in first and "<action>up</action>" in first
    sr = out["sr"][0]
    assert (sr["action"], sr["alt_action"], sr["rationale"]) == ("right", "up", "Rationale 4: J is the goal.")
    # the alternative's action tag is gone: the target holds exactly one action, the expert's
    assert sr["messages"][-1]["content"] == "Rationale 4: J is the goal.\n<action>right</action>"
    assert sr["messages"][:-1] == prompts.policy_messages(TASK, S0)


def test_masks_train_only_next_state_for_iwm_and_only_rationale_plus_action_for_sr():
    tok = build_tiny_tokenizer()
    chat = ChatTokenizer(tok)
    out, _ = build(ScriptedPolicy(tok, replies("up", "left", "left", "up")), k=2, max_rounds=1)
    eos = tok.eos_token_id
    iwm = out["iwm"][0]
    row = record_sample(iwm["messages"], chat)
    assert row.response_ids == tok.encode(NEXT[0]["up"], add_special_tokens=False) + [eos]
    assert row.response_mask == [1] * len(row.response_ids)
    context = tok.decode(row.prompt_ids)
    assert S0 in context and "Suppose you reply <action>up</action>" in context and "Nothing happened" not in context
    sr = record_sample(out["sr"][0]["messages"], chat)
    assert sr.response_ids == tok.encode("Rationale 4: J is the goal.\n<action>right</action>",
                                         add_special_tokens=False) + [eos]
    assert tok.decode(sr.prompt_ids).endswith(f"{S0}<|im_end|>\n<|im_start|>assistant\n")
    il = record_sample(out["expert"][1]["messages"], chat)
    assert il.response_ids == tok.encode("<action>down</action>", add_special_tokens=False) + [eos]


def test_dataset_files_round_trip_and_are_checked(tmp_path):
    tok = build_tiny_tokenizer()
    out, stats = build(ScriptedPolicy(tok, replies("up", "left", "left", "up")), k=2, max_rounds=1)
    write_dataset(tmp_path / "d", out, {"counts": stats})
    assert read_records(tmp_path / "d" / "rollout.jsonl") == out["rollout"]
    assert len(stage_records(tmp_path / "d", ["sr.jsonl", "expert.jsonl"])) == 4 + 2
    with pytest.raises(ConfigError, match="not empty"):
        write_dataset(tmp_path / "d", out, {})  # never written over without overwrite=true
    bad = tmp_path / "d" / "iwm.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "s"}, {"role": "user", "content": "t"}]}\n')
    with pytest.raises(ConfigError, match=r"iwm.jsonl:1: the last message must be a non-empty assistant"):
        stage_records(tmp_path / "d", ["iwm.jsonl"])


def test_bad_input_fails_before_the_policy_is_asked(monkeypatch):
    tok = build_tiny_tokenizer()
    policy = ScriptedPolicy(tok, replies())
    with pytest.raises(ConfigError, match=r"no expert solver for env 'hotpotqa'"):
        build(policy, tasks=[{"task_id": "q", "env": "hotpotqa"}])
    with pytest.raises(ConfigError, match=r"early.k=4 but frozenlake has only 3 actions besides the expert's"):
        build(policy, k=4)
    with pytest.raises(ConfigError, match="no tasks"):
        build(policy, tasks=[])
    with pytest.raises(ValueError, match=r"rejects expert action 0 \('up'\): it changed nothing"):
        expert_trajectory(TASK, ["up", "right", "down"])
    with pytest.raises(ValueError, match=r"expert action 0 \('down'\) ends the episode \(hole\)"):
        expert_trajectory(TASK, ["down", "right"])
    monkeypatch.setitem(SOLVERS, "frozenlake", (lambda task: ["right", "jump"], ACTIONS))
    with pytest.raises(ValueError, match=r"rejects expert action 1 \('jump'\): the env could not parse it"):
        build(policy)
    assert policy.calls == []


def test_empty_or_missing_stage_files_are_errors(tmp_path):
    (tmp_path / "expert.jsonl").write_text("")
    with pytest.raises(ConfigError, match="hold no records: nothing to train on"):
        stage_records(tmp_path, ["expert.jsonl"])
    with pytest.raises(ConfigError, match=r"sr.jsonl is missing.*rationales=true"):
        stage_records(tmp_path, ["sr.jsonl", "expert.jsonl"])


def test_sokoban_expert_pushes_the_box_onto_the_target():
    room = ["#####", "#@$.#", "#####"]  # one push right
    steps = expert_trajectory({"task_id": "s", "env": "sokoban", "room": room, "max_turns": 3})
    assert [s.action for s in steps] == ["right"] and steps[0].next_state.endswith("Reward: 1")
