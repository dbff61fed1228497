"""A LangGraph ReAct graph trained through the adapter: token-exact recording, reflection
injection, tool calls and results, and every bad input ending in a defined reward."""

import asyncio

import pytest
from agent_scripts import (
    GOLD,
    GUIDANCE,
    QUERY,
    QUESTION,
    SYSTEM,
    exact_reward,
    expected_chat,
    react_script,
    search_docs,
    tool_call_text,
)
from langchain_core.messages import SystemMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from erl.agents.langgraph import LangGraphAttemptRunner
from erl.agents.recorder import AttemptRecorder, ContextLimitExceeded, parse_tool_calls
from erl.core.config import ConfigError, ErlConfig
from erl.core.interfaces import SamplingParams
from erl.core.reflection import GUIDANCE_HEADER
from erl.core.samples import episode_to_samples, trajectory_to_sequences
from erl.memory import ReflectionMemory
from erl.models.chat import ChatTokenizer
from erl.models.tiny import build_tiny_tokenizer
from erl.rollout.scripted import ScriptedPolicy
from erl.workflow.erl_workflow import ErlWorkflow

TOK = build_tiny_tokenizer()
TASK = {"task_id": "q1", "question": QUESTION, "answer": GOLD}


@tool
def search(query: str) -> str:
    """Search the documents."""
    return search_docs(query)


@tool
def broken_search(query: str) -> str:
    """Search the documents."""
    raise RuntimeError("index offline")


def react_graph(model, tools=(search,), handle_tool_errors=None, sync=False):
    """A ReAct agent the way LangGraph users write one."""
    llm = model.bind_tools(list(tools))

    async def agent(state: MessagesState):
        return {"messages": [await llm.ainvoke([SystemMessage(SYSTEM), *state["messages"]])]}

    def sync_agent(state: MessagesState):  # LangGraph runs this in a worker thread
        return {"messages": [llm.invoke([SystemMessage(SYSTEM), *state["messages"]])]}

    kwargs = {} if handle_tool_errors is None else {"handle_tool_errors": handle_tool_errors}
    graph = StateGraph(MessagesState)
    graph.add_node("agent", sync_agent if sync else agent)
    graph.add_node("tools", ToolNode(list(tools), **kwargs))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def run_episode(script, runner=None, config=None, memory=None):
    policy = ScriptedPolicy(TOK, script)
    runner = runner or LangGraphAttemptRunner(react_graph, exact_reward)
    wf = ErlWorkflow(policy=policy, config=config or ErlConfig(), memory=memory, runner=runner)
    return asyncio.run(wf.run(dict(TASK), "q1:0")), policy


def run_attempt(script, runner, guidance=None, max_turns=8):
    policy = ScriptedPolicy(TOK, script)
    wf = ErlWorkflow(policy=policy, config=ErlConfig(max_turns=max_turns), runner=runner)
    return asyncio.run(wf.attempt(dict(TASK), "attempt1", guidance=guidance)), policy


def test_react_graph_runs_attempt1_reflection_attempt2():
    memory = ReflectionMemory()
    episode, policy = run_episode(react_script, memory=memory)
    names = [t.name for t in episode.trajectories]
    assert names == ["attempt1", "reflection", "attempt2", "distill"]
    first, reflection, second = episode.trajectories[:3]
    # attempt 1 answers "Miradel" (wrong): r1 = 0; the reflection and attempt 2 earn r2 = 1.
    assert (first.reward, reflection.reward, second.reward) == (0.0, 1.0, 1.0)
    assert first.info["answer"] == "Miradel" and second.info["answer"] == GOLD
    assert episode.metrics["memory_stored"] == 1.0 and memory.retrieve("default")[0].text == GUIDANCE
    # The reflection reaches attempt 2 in the system prompt, after the graph's own prompt.
    a1_prompt, a2_prompt = TOK.decode(first.info["prompt_ids"]), TOK.decode(second.info["prompt_ids"])
    assert GUIDANCE not in a1_prompt and SYSTEM in a1_prompt
    assert f"{SYSTEM}\n\n{GUIDANCE_HEADER}\n{GUIDANCE}" in a2_prompt
    assert TOK.decode(second.info["plain_prompt_ids"]) == a1_prompt
    # The reflection saw the failed attempt turn by turn, tool results included.
    assert "Kell Dispensary was started by Nadia Kell" in policy.calls[2]
    assert "Wrong answer." in policy.calls[2]
    # Consolidation: attempt 2's tokens on attempt 1's prompt (no reflection in it).
    distill = episode.trajectories[3]
    assert distill.steps[0].prompt_ids == first.info["prompt_ids"]
    assert distill.steps[-1].response_ids == second.steps[-1].response_ids


def test_recorded_ids_decode_to_exactly_the_chat_the_model_saw():
    traj, policy = run_attempt(react_script, LangGraphAttemptRunner(react_graph, exact_reward))
    assert len(traj.steps) == 2
    for step, seen in zip(traj.steps, policy.calls):
        assert TOK.decode(step.prompt_ids) == seen
    # One training sequence: call 2's prompt extends call 1's prompt + reply (no re-tokenising) ...
    (seq,) = trajectory_to_sequences(traj)
    text = TOK.decode(seq.prompt_ids + seq.response_ids)
    # ... and it is exactly the template's rendering of the whole chat, tool schemas kept
    # (the template ends the last turn with "\n", which the model does not generate).
    schemas = [convert_to_openai_tool(search)]
    assert text + "\n" == expected_chat(TOK, "Miradel", schemas)
    assert '"name": "search"' in TOK.decode(traj.steps[1].prompt_ids)  # schemas in the 2nd call too


def test_tool_calls_and_results_land_in_the_trajectory_with_model_only_masks():
    episode, _ = run_episode(react_script)
    first = episode.trajectories[0]
    call, answer = first.steps
    assert call.info["tool_calls"] == [{"id": "call_0_0", "name": "search", "arguments": {"query": QUERY}}]
    assert call.observation == f"[tool search] {search_docs(QUERY)}"
    assert answer.response == "Miradel" and "Wrong answer." in answer.observation and answer.done
    row = next(r for r in episode_to_samples(episode) if r.segment.value == "attempt1")
    trained = [t for t, m in zip(row.response_ids, row.response_mask) if m]
    # The mask covers exactly the generated ids (each reply ends with its <|im_end|>).
    assert trained == call.response_ids + answer.response_ids
    assert all(lp == -0.5 for lp, m in zip(row.logprobs, row.response_mask) if m)
    assert all(lp == 0.0 for lp, m in zip(row.logprobs, row.response_mask) if not m)
    untrained = TOK.decode([t for t, m in zip(row.response_ids, row.response_mask) if not m])
    assert search_docs(QUERY) in untrained and search_docs(QUERY) not in TOK.decode(trained)


def test_parse_tool_calls_never_trusts_the_text():
    good = tool_call_text("search", {"query": "x"})
    assert parse_tool_calls(f"Let me look. {good}").tool_calls == [
        {"id": "call_0", "name": "search", "arguments": {"query": "x"}}]
    assert parse_tool_calls(f"Let me look. {good}").content == "Let me look."
    stringy = parse_tool_calls('<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"y\\"}"}</tool_call>')
    assert stringy.tool_calls[0]["arguments"] == {"query": "y"}
    for bad in ('<tool_call>{"name": "search", "arguments": {"query": }</tool_call>',  # broken JSON
                "<tool_call>[1, 2]</tool_call>", '<tool_call>{"arguments": {}}</tool_call>',
                '<tool_call>{"name": "search", "arguments": [1]}</tool_call>', "<tool_call>" + "[" * 5000):
        parsed = parse_tool_calls(bad)
        assert parsed.tool_calls == [] and parsed.content == bad.strip()
    mixed = parse_tool_calls(f"<tool_call>oops</tool_call> {good}")
    assert len(mixed.tool_calls) == 1 and mixed.content == "<tool_call>oops</tool_call>"
    assert mixed.errors == ["tool call 1: not valid JSON"]


def test_malformed_tool_call_json_ends_as_an_answer_with_feedback():
    bad = '<tool_call>{"name": "search", "arguments": {"query": }</tool_call>'
    traj, _ = run_attempt(lambda p, i: bad, LangGraphAttemptRunner(react_graph, exact_reward))
    # No tool call was made: the graph ended and the text was scored as the answer.
    assert len(traj.steps) == 1 and traj.steps[0].info["tool_calls"] == []
    assert traj.reward == 0.0 and traj.info["answer"] == bad and traj.info["error"] is None
    assert "Wrong answer." in traj.info["feedback"] and "could not be read (tool call 1: not valid JSON)" in \
        traj.info["feedback"]


def test_a_tool_that_raises():
    def script(prompt, i):
        return tool_call_text("broken_search", {"query": "x"}) if i == 0 else GOLD

    # Handled by the graph's ToolNode: the model reads the error and still answers.
    handled = LangGraphAttemptRunner(lambda m: react_graph(m, (broken_search,), handle_tool_errors=True),
                                     exact_reward)
    traj, _ = run_attempt(script, handled)
    assert traj.reward == 1.0 and "index offline" in traj.steps[0].observation
    # Not handled: the graph raises; the attempt ends with reward 0 and says why.
    raw = LangGraphAttemptRunner(lambda m: react_graph(m, (broken_search,)), exact_reward)
    traj, _ = run_attempt(script, raw)
    assert traj.reward == 0.0 and not traj.info["success"]
    assert "RuntimeError: index offline" in traj.info["error"] and "ended early" in traj.info["feedback"]


def test_a_graph_that_loops_past_its_step_limit():
    loop = lambda p, i: tool_call_text("search", {"query": QUERY})
    traj, policy = run_attempt(loop, LangGraphAttemptRunner(react_graph, exact_reward), max_turns=3)
    assert len(policy.calls) == 3 and len(traj.steps) == 3  # the 4th call is refused
    assert traj.reward == 0.0 and "more than 3 model calls" in traj.info["feedback"]
    assert traj.steps[-1].done and "Reward: 0" in traj.steps[-1].observation
    # LangGraph's own recursion limit ends it the same way.
    tight = LangGraphAttemptRunner(react_graph, exact_reward, recursion_limit=3)
    traj, _ = run_attempt(loop, tight)
    assert traj.reward == 0.0 and "step limit (3 graph steps)" in traj.info["error"]


def test_an_attempt_past_its_time_limit_scores_zero():
    class Slow(ScriptedPolicy):
        async def generate(self, prompt_ids, params):
            await asyncio.sleep(5)  # cancelled by the runner's timeout
            return await super().generate(prompt_ids, params)

    wf = ErlWorkflow(policy=Slow(TOK, react_script),
                     runner=LangGraphAttemptRunner(react_graph, exact_reward, timeout_s=0.2))
    traj = asyncio.run(wf.attempt(dict(TASK), "attempt1"))
    assert traj.reward == 0.0 and traj.info["error"] == "the agent did not finish within 0.2 s"
    assert traj.steps == [] and traj.info["prompt_ids"]  # a bare attempt the reflection can still read


def test_an_empty_answer_scores_zero_without_calling_the_reward():
    def reward(task, answer):
        raise AssertionError("not called for an empty answer")

    traj, _ = run_attempt(lambda p, i: "   ", LangGraphAttemptRunner(react_graph, reward))
    assert traj.reward == 0.0 and "no final answer" in traj.info["feedback"]


def test_sync_nodes_and_reflection_in_the_first_user_message():
    runner = LangGraphAttemptRunner(lambda m: react_graph(m, sync=True), exact_reward, placement="first_user")
    traj, _ = run_attempt(react_script, runner, guidance=GUIDANCE)
    assert traj.reward == 1.0 and len(traj.steps) == 2
    first = traj.info["messages"]
    assert first[0] == {"role": "system", "content": SYSTEM}
    assert first[1]["content"] == f"{GUIDANCE_HEADER}\n{GUIDANCE}\n\n{QUESTION}"
    assert len(trajectory_to_sequences(traj)) == 1
    with pytest.raises(ConfigError, match="placement"):
        LangGraphAttemptRunner(react_graph, exact_reward, placement="first_usr")


def test_a_failing_policy_is_not_hidden_as_a_bad_attempt():
    class Broken(ScriptedPolicy):
        async def generate(self, prompt_ids, params):
            raise MemoryError("out of GPU memory")

    wf = ErlWorkflow(policy=Broken(TOK, react_script), runner=LangGraphAttemptRunner(react_graph, exact_reward))
    with pytest.raises(MemoryError):
        asyncio.run(wf.attempt(dict(TASK), "attempt1"))


def test_recorder_rewritten_history_and_context_limit():
    async def go():
        chat = ChatTokenizer(TOK)
        rec = AttemptRecorder(ScriptedPolicy(TOK, lambda p, i: f"reply {i}"), chat, SamplingParams(64),
                              name="attempt1", task={}, max_context_tokens=120)
        await rec.complete([{"role": "user", "content": "first"}])
        # The agent dropped its history: the call is rendered afresh, a new training sequence.
        await rec.complete([{"role": "user", "content": "second"}])
        assert len(trajectory_to_sequences(rec.traj)) == 2
        assert TOK.decode(rec.traj.steps[1].prompt_ids) == chat.tokenizer.apply_chat_template(
            [{"role": "user", "content": "second"}], add_generation_prompt=True, tokenize=False)
        with pytest.raises(ContextLimitExceeded):
            await rec.complete([{"role": "user", "content": "x" * 200}])
        assert rec.traj.info["truncated"] and len(rec.traj.steps) == 2

    asyncio.run(go())


def test_a_10mb_chat_is_refused_before_it_is_tokenised():
    """Without a limit a 10 MB chat reached the policy as 10.5M tokens; now the recorder has
    one always (the workflow's, else DEFAULT_MAX_CONTEXT_TOKENS) and checks characters first."""
    import time

    from erl.agents.recorder import DEFAULT_MAX_CONTEXT_TOKENS, max_token_chars

    async def go():
        rec = AttemptRecorder(ScriptedPolicy(TOK, lambda p, i: "y"), ChatTokenizer(TOK), SamplingParams(8),
                              name="attempt1", task={})
        assert rec.max_context_tokens == DEFAULT_MAX_CONTEXT_TOKENS
        start = time.process_time()  # CPU time: the test machine is shared
        with pytest.raises(ContextLimitExceeded, match="10000000 characters"):
            await rec.complete([{"role": "user", "content": "x" * 10_000_000}])
        return time.process_time() - start, rec

    seconds, rec = asyncio.run(go())
    assert seconds < 1.0 and not rec.traj.steps and rec.traj.info["truncated"]
    # the bound: no token of the byte-level tokenizer stands for more characters than its longest entry
    assert max_token_chars(TOK) == len("<|endoftext|>")


def test_the_graph_runner_takes_the_trainers_context_limit():
    runner = LangGraphAttemptRunner(lambda model: None, lambda task, answer: 0.0)
    assert runner.max_context_tokens is None
    ErlWorkflow(policy=ScriptedPolicy(TOK, lambda p, i: "y"), runner=runner, max_context_tokens=300)
    assert runner.max_context_tokens == 300
