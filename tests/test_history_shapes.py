"""Multi-turn recording for any history shape, through all three runners.

Agents written here show the model a different chat on each call: the whole history
(append-only), a window (system + latest observation, like rLLM's FrozenLake agent with
use_accumulate_history=False), a system prompt rewritten every turn, and a history
summarised on the third call. For each: every prompt is exactly the chat the agent asked
for, a new training sequence starts where the chat stops extending the last one, and the
loss mask covers the model's tokens only.
"""

import asyncio

import openai
import pytest
from agent_scripts import TOOLS
from langchain_core.messages import convert_to_openai_messages
from langgraph.graph import END, START, MessagesState, StateGraph

from erl.agents.langgraph import LangGraphAttemptRunner
from erl.agents.openai_server import OpenAIAttemptRunner, PolicyServer
from erl.agents.recorder import AttemptRecorder
from erl.core.config import ErlConfig
from erl.core.interfaces import Action, SamplingParams
from erl.core.reflection import GUIDANCE_HEADER
from erl.core.samples import rebase_steps, trajectory_to_sequences
from erl.core.types import Trajectory
from erl.models.chat import ChatTokenizer
from erl.models.tiny import build_tiny_tokenizer
from erl.rollout.scripted import ScriptedPolicy
from erl.workflow.erl_workflow import ErlWorkflow

TOK = build_tiny_tokenizer()
SYS = "Walk to the goal."
TASK = {"task_id": "walk"}


def S(text):
    return {"role": "system", "content": text}


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def view(shape: str, full: list[dict], k: int) -> list[dict]:
    """The chat an agent shows the model on its call k (0-based), from its whole history."""
    if shape == "window":
        return [full[0], full[-1]]
    if shape == "rewrite_system":
        return [S(f"{SYS} Turn {k + 1}.")] + full[1:]
    if shape == "summary" and k == 2:
        return [full[0], U(f"Earlier: 2 moves. {full[-1]['content']}")]
    return list(full)


# The model says "go k" on call k; the environment answers "obs k" after move k.
EXPECTED = {  # shape -> (the chat of each of the 3 calls, worked out by hand; training sequences)
    "append": ([[S(SYS), U("obs 0")],
                [S(SYS), U("obs 0"), A("go 0"), U("obs 1")],
                [S(SYS), U("obs 0"), A("go 0"), U("obs 1"), A("go 1"), U("obs 2")]], [[0, 1, 2]]),
    "window": ([[S(SYS), U("obs 0")], [S(SYS), U("obs 1")], [S(SYS), U("obs 2")]], [[0], [1], [2]]),
    "rewrite_system": ([[S(f"{SYS} Turn 1."), U("obs 0")],
                        [S(f"{SYS} Turn 2."), U("obs 0"), A("go 0"), U("obs 1")],
                        [S(f"{SYS} Turn 3."), U("obs 0"), A("go 0"), U("obs 1"), A("go 1"), U("obs 2")]],
                       [[0], [1], [2]]),
    "summary": ([[S(SYS), U("obs 0")],
                 [S(SYS), U("obs 0"), A("go 0"), U("obs 1")],
                 [S(SYS), U("Earlier: 2 moves. obs 2")]], [[0, 1], [2]]),
}
SHAPES = list(EXPECTED)


def script(prompt: str, call: int) -> str:
    return f"go {call}"


def rendered(chat: list[dict]) -> str:
    return TOK.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


def check(traj, policy, shape, guidance=None):
    chats, groups = EXPECTED[shape]
    assert len(traj.steps) == 3
    for k, (step, chat) in enumerate(zip(traj.steps, chats)):
        text = TOK.decode(step.prompt_ids)
        assert text == policy.calls[k]  # the recorded ids are what the model was given
        if guidance is None:
            assert text == rendered(chat)  # ... and exactly the chat the agent asked for
        else:  # the reflection sits in the system prompt of every call
            assert text == rendered([S(f"{chat[0]['content']}\n\n{GUIDANCE_HEADER}\n{guidance}"), *chat[1:]])
        assert f"obs {k}" in text  # the newest observation always reaches the model
    seqs = trajectory_to_sequences(traj)
    assert len(seqs) == len(groups)
    for seq, group in zip(seqs, groups):
        first, last = traj.steps[group[0]], traj.steps[group[-1]]
        assert seq.prompt_ids == first.prompt_ids
        assert seq.prompt_ids + seq.response_ids == last.prompt_ids + last.response_ids
        trained = [t for t, m in zip(seq.response_ids, seq.response_mask) if m]
        assert TOK.decode(trained) == "".join(f"go {k}<|im_end|>" for k in group)
        assert all(lp == (-0.5 if m else 0.0) for lp, m in zip(seq.logprobs, seq.response_mask))


# ------------------------------------------------------------------ the env-agent runner
class ShapeAgent:
    """An rLLM-shaped agent that keeps its whole history and shows the model `view(...)`."""

    def __init__(self, shape):
        self.shape = shape
        self.reset()

    def reset(self):
        self.full, self.k = [S(SYS)], 0

    def update_from_env(self, observation, reward, done, info, **kwargs):
        if not done:
            self.full.append(U(observation))

    def update_from_model(self, response, **kwargs):
        self.full.append(A(response))
        self.k += 1
        return Action(response)

    @property
    def chat_completions(self):
        return view(self.shape, self.full, self.k)

    @property
    def trajectory(self):
        return None


class WalkEnv:
    def reset(self):
        self.moves = 0
        return "obs 0", {}

    def step(self, action):
        self.moves += 1
        done = self.moves == 3
        return f"obs {self.moves}", float(done), done, {"success": done}

    def close(self):
        pass


def env_attempt(shape, guidance=None):
    policy = ScriptedPolicy(TOK, script)
    wf = ErlWorkflow(lambda t: ShapeAgent(shape), lambda t: WalkEnv(), policy, ErlConfig(max_turns=8))
    return asyncio.run(wf.attempt(dict(TASK), "attempt1", guidance=guidance)), policy


@pytest.mark.parametrize("shape", SHAPES)
def test_env_agent_runner(shape):
    traj, policy = env_attempt(shape)
    check(traj, policy, shape)
    assert traj.reward == 1.0 and [s.observation for s in traj.steps] == ["obs 1", "obs 2", "obs 3"]


@pytest.mark.parametrize("shape", ["window", "summary"])
def test_env_agent_runner_with_guidance(shape):
    traj, policy = env_attempt(shape, guidance="Go right.")
    check(traj, policy, shape, guidance="Go right.")
    assert TOK.decode(traj.info["plain_prompt_ids"]) == rendered(EXPECTED[shape][0][0])
    # Consolidation re-bases every call onto its chat without the reflection, each
    # sequence from its own first prompt, so no step of a rewritten history is lost.
    plain = rebase_steps(traj.steps, traj.info["prompt_ids"], traj.info["plain_prompt_ids"])
    assert [TOK.decode(s.prompt_ids) for s in plain] == [rendered(chat) for chat in EXPECTED[shape][0]]
    assert [s.response_ids for s in plain] == [s.response_ids for s in traj.steps]
    assert len(trajectory_to_sequences(Trajectory("distill", steps=plain))) == len(EXPECTED[shape][1])


def test_agent_that_edits_its_chat_in_place():
    """The runner keeps its own copy of each call's chat: an agent that rewrites an old
    message in place (not a new list) still starts a new sequence."""

    class Editor(ShapeAgent):
        def update_from_model(self, response, **kwargs):
            self.full[0]["content"] = f"{SYS} Moves so far: {self.k + 1}."
            return super().update_from_model(response)

    policy = ScriptedPolicy(TOK, script)
    wf = ErlWorkflow(lambda t: Editor("append"), lambda t: WalkEnv(), policy, ErlConfig(max_turns=8))
    traj = asyncio.run(wf.attempt(dict(TASK), "attempt1"))
    assert len(trajectory_to_sequences(traj)) == 3
    assert TOK.decode(traj.steps[2].prompt_ids) == rendered(
        [S(f"{SYS} Moves so far: 2."), U("obs 0"), A("go 0"), U("obs 1"), A("go 1"), U("obs 2")])


# ------------------------------------------------------------------ the LangGraph runner
def walk_graph(shape):
    def factory(model):
        async def agent(state: MessagesState):
            full = convert_to_openai_messages(state["messages"])
            k = sum(m["role"] == "assistant" for m in full)
            return {"messages": [await model.ainvoke(view(shape, full, k))]}

        def env(state: MessagesState):
            k = sum(m.type == "ai" for m in state["messages"])
            return {"messages": [U(f"obs {k}")]}

        graph = StateGraph(MessagesState)
        graph.add_node("agent", agent)
        graph.add_node("env", env)
        graph.add_edge(START, "agent")
        graph.add_conditional_edges("agent", lambda s: END if sum(m.type == "ai" for m in s["messages"]) == 3
                                    else "env")
        graph.add_edge("env", "agent")
        return graph.compile()

    return factory


def walk_reward(task, answer):
    return float(answer == "go 2")


@pytest.mark.parametrize("shape", SHAPES)
def test_langgraph_runner(shape):
    policy = ScriptedPolicy(TOK, script)
    runner = LangGraphAttemptRunner(walk_graph(shape), walk_reward, input_fn=lambda t: {"messages": [S(SYS), U("obs 0")]})
    wf = ErlWorkflow(policy=policy, config=ErlConfig(max_turns=8), runner=runner)
    traj = asyncio.run(wf.attempt(dict(TASK), "attempt1"))
    check(traj, policy, shape)
    assert traj.reward == 1.0 and traj.steps[0].observation == "[user] obs 1"


def test_langgraph_runner_window_with_guidance_rebases_every_call():
    policy = ScriptedPolicy(TOK, script)
    runner = LangGraphAttemptRunner(walk_graph("window"), walk_reward,
                                    input_fn=lambda t: {"messages": [S(SYS), U("obs 0")]})
    wf = ErlWorkflow(policy=policy, config=ErlConfig(max_turns=8), runner=runner)
    traj = asyncio.run(wf.attempt(dict(TASK), "attempt2", guidance="Go right."))
    check(traj, policy, "window", guidance="Go right.")
    plain = rebase_steps(traj.steps, traj.info["prompt_ids"], traj.info["plain_prompt_ids"])
    assert [TOK.decode(s.prompt_ids) for s in plain] == [rendered(chat) for chat in EXPECTED["window"][0]]


# ------------------------------------------------------------------ the OpenAI-client runner
@pytest.fixture(scope="module")
def server():
    with PolicyServer() as s:
        yield s


def walk_client(shape):
    def agent(base_url, task):
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=20)
        full = [S(SYS), U("obs 0")]
        for k in range(3):
            text = client.chat.completions.create(model="m", messages=view(shape, full, k)).choices[0].message.content
            full += [A(text)] + ([U(f"obs {k + 1}")] if k < 2 else [])
        return text

    return agent


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", SHAPES)
def test_openai_client_runner(server, shape):
    policy = ScriptedPolicy(TOK, script)
    wf = ErlWorkflow(policy=policy, config=ErlConfig(max_turns=8),
                     runner=OpenAIAttemptRunner(walk_client(shape), walk_reward, server=server))
    traj = asyncio.run(wf.attempt(dict(TASK), "attempt1"))
    check(traj, policy, shape)
    assert traj.reward == 1.0


def test_changed_tools_start_a_new_sequence():
    async def go():
        policy = ScriptedPolicy(TOK, script)
        rec = AttemptRecorder(policy, ChatTokenizer(TOK), SamplingParams(32), name="attempt1", task={})
        chat = [S(SYS), U("obs 0")]
        await rec.complete(chat)
        chat += [A("go 0"), U("obs 1")]
        await rec.complete(chat, tools=TOOLS)  # same chat grown, but now with tool schemas
        return rec.traj, policy

    traj, policy = asyncio.run(go())
    assert policy.calls[1] == TOK.apply_chat_template(
        [S(SYS), U("obs 0"), A("go 0"), U("obs 1")], tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert len(trajectory_to_sequences(traj)) == 2
