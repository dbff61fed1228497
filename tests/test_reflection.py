"""Reflection prompts and parsing: pure text functions, every parse outcome."""

import pytest

from erl.core.reflection import (
    GUIDANCE_HEADER,
    apply_guidance,
    parse_reflection,
    render_attempt,
    render_reflection_request,
)
from erl.core.types import Step, Trajectory


@pytest.mark.parametrize("text,ok,body,error", [
    ("<prompt>Go around the Q cells.</prompt>", True, "Go around the Q cells.", None),
    # small models echo the instruction's empty example first: the last block wins
    ("Put it in <prompt></prompt>. OK: <prompt> Move down twice. </prompt>", True, "Move down twice.", None),
    ("<PROMPT>case does not matter</PROMPT>", True, "case does not matter", None),
    ("no tag at all", False, "", "missing_tag"),
    ("<prompt>never closed", False, "", "unclosed_tag"),
    ("<prompt>   </prompt>", False, "", "empty"),
    ("<prompt>" + "x" * 2001 + "</prompt>", False, "", "too_long"),
    ("", False, "", "missing_tag"),
])
def test_parse_outcomes(text, ok, body, error):
    parsed = parse_reflection(text, "prompt", max_chars=2000)
    assert (parsed.ok, parsed.text, parsed.error) == (ok, body, error)


def test_untagged_answer_accepted_when_the_tag_is_optional():
    assert parse_reflection("Move down.", require_tag=False).text == "Move down."
    assert parse_reflection("<prompt>half open", require_tag=False).text == "half open"
    assert parse_reflection("   ", require_tag=False).error == "empty"
    assert parse_reflection("<rules>a</rules>", tag="rules").text == "a"


def test_request_holds_task_attempt_reward_and_memory():
    attempt = Trajectory(name="attempt1", steps=[
        Step(response="left", observation="Nothing happened."), Step(response="x" * 900, observation=None)])
    task = [{"role": "system", "content": "Reply with up/down."}, {"role": "user", "content": "K - J"}]
    msgs = render_reflection_request(task, attempt, 0.0, memory=["Avoid Q."], tag="prompt")
    assert [m["role"] for m in msgs] == ["system", "user"]
    text = msgs[1]["content"]
    for part in ("Reply with up/down.", "K - J", "Turn 1", "Agent: left", "Environment: Nothing happened.",
                 "Reward: 0", "1. Avoid Q.", "<prompt></prompt>"):
        assert part in text, part
    assert "x" * 601 not in text and "[...]" in text  # long turns are clipped
    assert "Instructions that led to success" not in render_reflection_request(task, attempt, 0.0)[1]["content"]
    assert render_attempt(Trajectory(name="a")) == "(the agent took no turn)"


def test_guidance_placement():
    msgs = [{"role": "system", "content": "Interface."}, {"role": "user", "content": "obs"}]
    appended = apply_guidance(msgs, "Avoid Q.", "append_system")
    assert appended[0]["content"] == f"Interface.\n\n{GUIDANCE_HEADER}\nAvoid Q." and appended[1] == msgs[1]
    assert apply_guidance(msgs, "Avoid Q.", "replace_system")[0]["content"] == "Avoid Q."
    assert msgs[0]["content"] == "Interface."  # the caller's chat is never mutated
    no_system = apply_guidance(msgs[1:], "Avoid Q.")
    assert no_system[0] == {"role": "system", "content": f"{GUIDANCE_HEADER}\nAvoid Q."}
    assert apply_guidance(msgs, None) == msgs


def test_first_user_placement_is_one_of_the_shared_placements():
    from erl.core.config import ConfigError, ErlConfig, check_placement
    from erl.core.reflection import GUIDANCE_HEADER, PLACEMENTS, place_guidance

    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    out = apply_guidance(msgs, "Avoid Q.", "first_user")
    assert out == [msgs[0], {"role": "user", "content": f"{GUIDANCE_HEADER}\nAvoid Q.\n\nU"}]
    assert msgs[1]["content"] == "U"  # the caller's messages are untouched
    # no user message: falls back to the system prompt
    assert apply_guidance(msgs[:1], "G", "first_user") == [{"role": "system", "content": f"S\n\n{GUIDANCE_HEADER}\nG"}]
    assert place_guidance(msgs, "G", lambda m, g: [*m, {"role": "user", "content": g}])[-1] == {
        "role": "user", "content": "G"}
    assert place_guidance(msgs, None, lambda m, g: 1 / 0) == msgs  # no reflection: the callable is not asked
    assert ErlConfig(reflection_placement="first_user").reflection_placement == "first_user"
    assert set(PLACEMENTS) == {"append_system", "replace_system", "first_user"}
    with pytest.raises(ConfigError, match="placement must be one of"):
        check_placement("last_user")
