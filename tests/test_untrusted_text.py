"""Every parser that reads model output or an HTTP body: any input gives a defined result or
the documented exception, in time linear in the input (hypothesis + 1-2 MB adversarial text)."""

import json
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erl.agents.openai_server import BodyError, parse_chat_body
from erl.agents.recorder import parse_tool_calls
from erl.core.reflection import parse_reflection
from erl.core.tags import last_tag_block, tag_blocks
from erl.envs.base import ACTIONS, parse_action
from erl.envs.hotpotqa import extract_answer
from erl.envs.hotpotqa import parse_action as hotpotqa_action

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text made of the pieces the parsers look for, so that examples hit their branches.
PIECES = ["<prompt>", "</prompt>", "<PROMPT>", "<tool_call>", "</tool_call>", "<action>", "</action>", "search[",
          "answer[", "]", "{", "}", '"name"', ":", '"search"', '"arguments"', "up", "Left", " ", "x", "\n", "\udcff"]
tagged_text = st.lists(st.sampled_from(PIECES), max_size=40).map("".join) | st.text(max_size=200)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


@FAST
@given(tagged_text)
def test_tag_blocks_find_what_the_non_greedy_regex_finds(text):
    expected = re.findall(r"<prompt>(.*?)</prompt>", text, flags=re.IGNORECASE | re.DOTALL)
    assert [b.group(1) for b in tag_blocks(text, "<prompt>", "</prompt>", ignore_case=True)] == expected
    assert last_tag_block(text, "<prompt>", "</prompt>", ignore_case=True) == (expected[-1] if expected else None)
    expected = re.findall(r"<tool_call>(.*?)</tool_call>", text, flags=re.DOTALL)
    assert [b.group(1) for b in tag_blocks(text, "<tool_call>", "</tool_call>")] == expected


@FAST
@given(tagged_text, st.booleans(), st.integers(1, 50))
def test_parse_reflection_always_returns_a_defined_outcome(text, require_tag, max_chars):
    r = parse_reflection(text, "prompt", max_chars, require_tag)
    if r.ok:
        assert r.text and r.text == r.text.strip() and len(r.text) <= max_chars and r.error is None
    else:
        assert r.error in ("missing_tag", "unclosed_tag", "empty", "too_long") and r.text == ""


@FAST
@given(tagged_text | st.binary(max_size=100) | st.none() | st.integers())
def test_grid_parse_action_is_an_action_or_none(text):
    assert parse_action(text) in (*ACTIONS, None)


@FAST
@given(tagged_text | st.none())
def test_hotpotqa_parse_action_and_extract_answer_are_defined(text):
    kind, arg = hotpotqa_action(text)
    assert (kind, arg) == (None, "") or (kind in ("search", "answer") and isinstance(arg, str))
    assert isinstance(extract_answer(text), str)


@FAST
@given(tagged_text, st.lists(st.tuples(st.text(max_size=8), json_values.filter(lambda v: not isinstance(v, str))),
                             max_size=3))
def test_parse_tool_calls_yields_only_well_formed_calls(noise, calls):
    text = noise + "".join(f"<tool_call>{json.dumps({'name': n, 'arguments': a})}</tool_call>" for n, a in calls)
    reply = parse_tool_calls(text)
    for call in reply.tool_calls:
        assert set(call) == {"id", "name", "arguments"} and call["name"] and isinstance(call["arguments"], dict)
    if not reply.tool_calls:
        assert reply.content == text.strip()
    if "tool_call>" not in noise:  # every block naming a function with object arguments is a call
        good = [n.strip() for n, a in calls if n.strip() and isinstance(a, dict)]
        assert [c["name"] for c in reply.tool_calls] == good
        assert len(reply.errors) == len(calls) - len(good)


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_as_a_body_are_a_request_or_a_4xx(raw):
    try:
        _, messages = parse_chat_body(raw)
    except BodyError as e:
        assert e.status == 400 and e.code
    else:
        assert messages and all(isinstance(m["content"], str) for m in messages)


@FAST
@given(json_values, st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "tool", "wizard", 3]),
                                                    "content": json_values}), max_size=3))
def test_any_json_as_a_body_is_a_request_or_a_4xx(extra, messages):
    for body in (extra, {"messages": messages, "tools": extra}, {"messages": messages, "user": extra}):
        try:
            _, msgs = parse_chat_body(json.dumps(body).encode())
        except BodyError as e:
            assert e.status == 400
        else:
            assert len(msgs) == len(messages)


def test_a_lone_surrogate_anywhere_in_the_body_is_a_400():
    for body in ('{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
                 '{"messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "\\udfff"}]}'):
        with pytest.raises(BodyError, match="lone surrogate") as e:
            parse_chat_body(body.encode())
        assert e.value.status == 400 and e.value.code == "invalid_unicode"


# ---- linear time on adversarial input ------------------------------------------------------
MB = 2**20


def _seconds(fn, small, large) -> tuple[float, float]:
    """The least CPU time of five for each input, measured in turns: a busy shared machine
    only ever adds time, and in turns a slow spell hits both sizes alike."""
    best = [float("inf"), float("inf")]
    for _ in range(5):
        for i, arg in enumerate((small, large)):
            start = time.process_time()
            fn(arg)
            best[i] = min(best[i], time.process_time() - start)
    return best[0], best[1]


def _body(n: int) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "x" * n}]}).encode()


ADVERSARIAL = {
    # (parser, input of about n characters); the quadratic ones took 14 s at 160 kB before
    "reflection: opening tags only": (lambda s: parse_reflection(s), lambda n: "<prompt>" * (n // 8)),
    "reflection: untagged, require_tag=False": (lambda s: parse_reflection(s, require_tag=False),
                                                lambda n: "<prompt" * (n // 7)),
    "tool calls: opening tags only": (parse_tool_calls, lambda n: "<tool_call>" * (n // 11)),
    "tool calls: unclosed JSON in blocks": (parse_tool_calls, lambda n: "<tool_call>{</tool_call>" * (n // 24)),
    "tool calls: valid calls": (parse_tool_calls, lambda n: '<tool_call>{"name": "f"}</tool_call>' * (n // 36)),
    "reflection: many complete blocks": (parse_reflection, lambda n: "<PROMPT>a</prompt>" * (n // 18)),
    "grid action: opening tags only": (parse_action, lambda n: "<action>" * (n // 8)),
    "hotpotqa action: unclosed brackets": (hotpotqa_action, lambda n: "search[" * (n // 7)),
    "hotpotqa answer: unclosed tags": (extract_answer, lambda n: "<answer>" * (n // 8)),
    "body: one huge message": (parse_chat_body, _body),
    "body: deep nesting": (lambda b: _swallow(parse_chat_body, b), lambda n: b"[" * n),
    "body: surrogates": (lambda b: _swallow(parse_chat_body, b), lambda n: _body(0).replace(b'""', b'"' + b"\\ud800" * (n // 6) + b'"')),
}


def _swallow(fn, arg):
    try:
        fn(arg)
    except BodyError:
        pass


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_parsers_take_linear_time_on_adversarial_input(name):
    fn, make = ADVERSARIAL[name]
    one, two = _seconds(fn, make(MB), make(2 * MB))
    assert one < 1.0, f"{name}: {one:.3f} s for 1 MB"
    # quadratic would be ~4x; the constant absorbs timer noise on inputs parsed in microseconds
    assert two < 3.0 * one + 0.05, f"{name}: {one:.3f} s for 1 MB, {two:.3f} s for 2 MB"
