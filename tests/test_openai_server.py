"""The OpenAI-compatible endpoint: the real `openai` client against a uvicorn server on
127.0.0.1 (a free port, started and stopped here), token-exact recording, 4xx for bad bodies."""

import asyncio
import json

import httpx
import openai
import pytest
from agent_scripts import (
    GOLD,
    GUIDANCE,
    QUERY,
    QUESTION,
    SYSTEM,
    TOOLS,
    exact_reward,
    expected_chat,
    react_script,
    search_docs,
    tool_call_text,
)

from erl.agents.openai_server import OpenAIAttemptRunner, PolicyServer
from erl.agents.recorder import AttemptRecorder
from erl.core.config import ErlConfig
from erl.core.interfaces import SamplingParams
from erl.core.samples import trajectory_to_sequences
from erl.models.chat import ChatTokenizer
from erl.models.tiny import build_tiny_tokenizer
from erl.rollout.scripted import ScriptedPolicy
from erl.workflow.erl_workflow import ErlWorkflow

pytestmark = pytest.mark.timeout(60)
TOK = build_tiny_tokenizer()
TASK = {"task_id": "q1", "question": QUESTION, "answer": GOLD}


@pytest.fixture(scope="module")
def server():
    with PolicyServer() as s:
        yield s


def react_agent(base_url: str, task: dict) -> str:
    """An ordinary tool-calling loop with the synchronous openai client."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=20)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task["question"]}]
    for _ in range(8):
        reply = client.chat.completions.create(model="any", messages=messages, tools=TOOLS).choices[0].message
        messages.append(reply.model_dump(exclude_none=True))
        if not reply.tool_calls:
            return reply.content
        for call in reply.tool_calls:
            query = json.loads(call.function.arguments)["query"]
            messages.append({"role": "tool", "tool_call_id": call.id, "content": search_docs(query)})
    return ""


def workflow(server, script, agent=react_agent, max_turns=8):
    policy = ScriptedPolicy(TOK, script)
    runner = OpenAIAttemptRunner(agent, exact_reward, server=server)
    return ErlWorkflow(policy=policy, config=ErlConfig(max_turns=max_turns), runner=runner), policy


def test_openai_client_runs_the_erl_loop_and_is_recorded_token_exactly(server):
    wf, policy = workflow(server, react_script)
    episode = asyncio.run(wf.run(dict(TASK), "q1:0"))
    assert [t.name for t in episode.trajectories] == ["attempt1", "reflection", "attempt2", "distill"]
    first, _, second, _ = episode.trajectories
    assert (first.reward, second.reward) == (0.0, 1.0) and second.info["answer"] == GOLD
    assert GUIDANCE in TOK.decode(second.info["prompt_ids"]) and GUIDANCE not in TOK.decode(first.info["prompt_ids"])
    call, answer = first.steps
    assert call.info["tool_calls"] == [{"id": "call_0_0", "name": "search", "arguments": {"query": QUERY}}]
    assert call.observation == f"[tool] {search_docs(QUERY)}"
    # The client sent the whole chat back; the recorder extended the ids instead of re-rendering.
    (seq,) = trajectory_to_sequences(first)
    assert TOK.decode(seq.prompt_ids + seq.response_ids) + "\n" == expected_chat(TOK, "Miradel", TOOLS)
    assert [TOK.decode(s.prompt_ids) for s in first.steps] == policy.calls[:2]
    assert sum(seq.response_mask) == len(call.response_ids) + len(answer.response_ids)


def test_async_client_header_and_user_field_name_the_session(server):
    async def go():
        chat = ChatTokenizer(TOK)
        rec = AttemptRecorder(ScriptedPolicy(TOK, lambda p, i: f"hello {i}"), chat, SamplingParams(32),
                              name="attempt1", task={})
        sid = server.open_session(rec)
        client = openai.AsyncOpenAI(base_url=server.base_url(), api_key="unused", max_retries=0,
                                    default_headers={"X-Session-Id": sid})
        msgs = [{"role": "user", "content": "hi"}]
        r1 = await client.chat.completions.create(model="m", messages=msgs)
        msgs += [{"role": "assistant", "content": r1.choices[0].message.content}, {"role": "user", "content": "again"}]
        async with httpx.AsyncClient() as http:
            r2 = await http.post(server.base_url() + "/chat/completions", json={"messages": msgs, "user": sid})
        server.close_session(sid)
        return rec, r1, r2.json()

    rec, r1, r2 = asyncio.run(go())
    assert r1.choices[0].message.content == "hello 0" and r1.choices[0].finish_reason == "stop"
    assert r2["choices"][0]["message"]["content"] == "hello 1"
    # usage: the first prompt's ids and the reply's ids incl. its <|im_end|>: len("hello 0") + 1.
    assert r1.usage.prompt_tokens == len(rec.traj.steps[0].prompt_ids) and r1.usage.completion_tokens == 8
    assert len(rec.traj.steps) == 2 and len(trajectory_to_sequences(rec.traj)) == 1


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_body"),
    (json.dumps({"model": "m"}).encode(), "invalid_body"),  # no messages
    (json.dumps({"messages": []}).encode(), "invalid_body"),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), "invalid_messages"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), "invalid_messages"),
    (json.dumps({"messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "search", "arguments": "{oops"}}]}]}).encode(), "invalid_messages"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": True}).encode(), "unsupported"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "n": 2}).encode(), "invalid_body"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": -1}).encode(), "invalid_body"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "no_session"),
])
def test_bad_request_bodies_get_a_4xx_json_error(server, body, code):
    r = httpx.post(server.base_url() + "/chat/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == code


def test_unknown_session_is_404_and_the_server_keeps_serving(server):
    r = httpx.post(server.base_url("nope") + "/chat/completions",
                   json={"messages": [{"role": "user", "content": "x"}]}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_session"
    assert httpx.get(server.base_url() + "/models", timeout=10).json()["data"][0]["id"] == "erl-policy"


def test_agent_looping_past_its_limit_gets_a_400_and_reward_zero(server):
    loop = lambda p, i: tool_call_text("search", {"query": QUERY})
    wf, policy = workflow(server, loop, max_turns=2)
    traj = asyncio.run(wf.attempt(dict(TASK), "attempt1"))
    # The 3rd call is refused with a 400; the client raises it; the attempt ends with 0.
    assert len(policy.calls) == 2 and len(traj.steps) == 2
    assert traj.reward == 0.0 and "more than 2 model calls" in traj.info["feedback"]


def test_agent_errors_and_empty_answers_are_bad_attempts(server, monkeypatch):
    """An agent that raises scores 0 and is not silent: its kind of failure is logged once a process,
    every such attempt counts in attempt/agent_errors; an empty answer scores 0 without counting."""
    import logging

    from erl.agents import recorder
    from erl.core.metrics import episode_metrics
    from erl.core.types import Episode

    def crashing(base_url, task):
        raise KeyError("tool config")

    async def silent(base_url, task):
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])

    monkeypatch.setattr(recorder, "_logged", set())  # this process's log of failure kinds, fresh
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # on the module's logger itself: erl's console logging stops propagation
    recorder.log.addHandler(handler)
    wf, _ = workflow(server, react_script, agent=crashing)
    try:
        crashed = [asyncio.run(wf.attempt(dict(TASK), "attempt1")) for _ in range(2)]
    finally:
        recorder.log.removeHandler(handler)
    traj = crashed[0]
    assert traj.reward == 0.0 and "KeyError" in traj.info["error"] and traj.info["prompt_ids"]
    logged = [r.getMessage() for r in records if "KeyError" in r.getMessage()]
    assert len(logged) == 1 and "the attempt scores 0" in logged[0]  # two failures of one kind: one line
    wf, _ = workflow(server, lambda p, i: "", agent=silent)
    traj = asyncio.run(wf.attempt(dict(TASK), "attempt1"))
    assert traj.reward == 0.0 and len(traj.steps) == 1 and "no final answer" in traj.info["feedback"]
    episodes = [Episode(id=str(i), trajectories=[t]) for i, t in enumerate([*crashed, traj])]
    assert episode_metrics(episodes)["attempt/agent_errors"] == pytest.approx(2 / 3)


def test_a_failing_policy_surfaces_through_http(server):
    class Broken(ScriptedPolicy):
        async def generate(self, prompt_ids, params):
            raise MemoryError("out of GPU memory")

    runner = OpenAIAttemptRunner(react_agent, exact_reward, server=server)
    wf = ErlWorkflow(policy=Broken(TOK, react_script), runner=runner)
    with pytest.raises(MemoryError):
        asyncio.run(wf.attempt(dict(TASK), "attempt1"))


def test_default_server_is_local_and_closed_by_the_runner():
    runner = OpenAIAttemptRunner(react_agent, exact_reward)
    wf = ErlWorkflow(policy=ScriptedPolicy(TOK, react_script), runner=runner)
    assert asyncio.run(wf.attempt(dict(TASK), "attempt1")).info["answer"] == "Miradel"
    server = runner.server
    assert server.host == "127.0.0.1" and server._server.servers[0].sockets[0].getsockname()[0] == "127.0.0.1"
    runner.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.base_url() + "/models", timeout=2)


def test_body_size_limit_is_a_413_declared_or_streamed():
    with PolicyServer(max_body_bytes=1000) as small:
        url = small.base_url() + "/chat/completions"
        big = json.dumps({"messages": [{"role": "user", "content": "x" * 2000}]}).encode()
        r = httpx.post(url, content=big, headers={"content-type": "application/json"}, timeout=10)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks():  # no Content-Length: the limit holds while the body streams in
            for i in range(0, len(big), 100):
                yield big[i:i + 100]

        r = httpx.post(url, content=chunks(), headers={"content-type": "application/json"}, timeout=10)
        assert r.status_code == 413
        ok = json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()
        r = httpx.post(url, content=ok, headers={"content-type": "application/json"}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "no_session"  # under the limit: read


def test_lone_surrogate_is_a_400_not_a_500(server):
    async def go():
        rec = AttemptRecorder(ScriptedPolicy(TOK, lambda p, i: "hi"), ChatTokenizer(TOK), SamplingParams(8),
                              name="attempt1", task={})
        sid = server.open_session(rec)
        async with httpx.AsyncClient() as http:
            r = await http.post(server.base_url(sid) + "/chat/completions", timeout=10,
                                content=b'{"messages": [{"role": "user", "content": "a\\ud800"}]}')
        server.close_session(sid)
        return r, rec

    r, rec = asyncio.run(go())
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_unicode" and not rec.traj.steps


def test_unknown_session_error_does_not_echo_a_long_id(server):
    sid = "s" * 100_000
    r = httpx.post(server.base_url() + "/chat/completions", headers={"X-Session-Id": sid},
                   json={"messages": [{"role": "user", "content": "x"}]}, timeout=10)
    message = r.json()["error"]["message"]
    assert r.status_code == 404 and "'ssssssssssssssss...'" in message and len(message) < 100


def test_the_runner_takes_the_trainers_context_limit_and_refuses_a_huge_chat_untokenised(server):
    calls = []

    async def huge(base_url, task):
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * 2_000_000}])

    runner = OpenAIAttemptRunner(huge, exact_reward, server=server)
    wf = ErlWorkflow(policy=ScriptedPolicy(TOK, lambda p, i: calls.append(p) or "y"), runner=runner,
                     max_context_tokens=512)
    assert runner.max_context_tokens == 512  # None before: the chat reached the policy whole
    traj = asyncio.run(wf.attempt(dict(TASK), "attempt1"))
    assert calls == [] and traj.reward == 0.0 and traj.info["truncated"]
    assert "2000000 characters, more than 512 tokens can hold" in traj.info["error"]
    own = OpenAIAttemptRunner(huge, exact_reward, server=server, max_context_tokens=64)
    ErlWorkflow(policy=ScriptedPolicy(TOK, lambda p, i: "y"), runner=own, max_context_tokens=512)
    assert own.max_context_tokens == 64  # a runner's own limit is kept
