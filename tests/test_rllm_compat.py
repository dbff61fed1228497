"""rLLM agent and env files, unchanged, through erl.agents.rllm: with their files in a folder
on sys.path (rLLM not installed), with rLLM installed, and with a module missing.

The files are written here in the shape of rLLM's own FrozenLake agent and environment
(the imports, `use_accumulate_history`, the trajectory bookkeeping), not copied from rLLM.
"""

import asyncio
import importlib
import json
import re
import sys
import textwrap

import pytest

from erl.agents.rllm import install_rllm_shim, remove_rllm_shim, rllm_factories, rllm_installed
from erl.core.config import ErlConfig
from erl.core.interfaces import Action
from erl.core.samples import trajectory_to_sequences
from erl.models.tiny import build_tiny_tokenizer
from erl.rollout.scripted import ScriptedPolicy
from erl.workflow.erl_workflow import ErlWorkflow

TOK = build_tiny_tokenizer()

AGENT = '''
import copy

from rllm.agents.agent import BaseAgent
from rllm.agents.system_prompts import *
from rllm.environments.corridor.corridor import CorridorEnv
from rllm.types import Action, Step, Trajectory


class CorridorAgent(BaseAgent):
    def __init__(self, use_accumulate_history=True):
        self.accumulate_history = use_accumulate_history
        self.reset()

    def reset(self):
        self._trajectory = Trajectory()
        self.messages = [{"role": "system", "content": CORRIDOR_PROMPT}]
        self.current_observation = None

    def update_from_env(self, observation, reward, done, info, **kwargs):
        text = "Position: " + str(observation)
        if self._trajectory.steps and self._trajectory.steps[-1].observation == str(observation):
            text += " (you did not move)"
        text += " Steps left: " + str(info.get("max_steps", 9) - len(self._trajectory.steps))
        self.messages.append({"role": "user", "content": text})
        self.current_observation = str(observation)

    def update_from_model(self, response, **kwargs):
        self.messages.append({"role": "assistant", "content": response})
        move = response.strip().split()[-1] if response.strip() else ""
        action = str(CorridorEnv.MOVES.get(move, CorridorEnv.INVALID_ACTION))
        self._trajectory.steps.append(Step(chat_completions=copy.deepcopy(self.chat_completions),
                                           action=action, model_response=response,
                                           observation=self.current_observation))
        return Action(action=action)

    @property
    def chat_completions(self):
        if self.accumulate_history or len(self.messages) <= 1:
            return self.messages
        return [self.messages[0], self.messages[-1]]

    @property
    def trajectory(self):
        return self._trajectory
'''

ENV = '''
from rllm.environments.base.base_env import BaseEnv


class CorridorEnv(BaseEnv):
    MOVES = {"Left": 1, "Right": 2}
    INVALID_ACTION = 0

    def __init__(self, length=3):
        self.length, self.pos = length, 0

    def reset(self):
        self.pos = 0
        return self.pos, {}

    def step(self, action):
        self.pos = max(0, self.pos + {"1": -1, "2": 1}.get(str(action), 0))
        done = self.pos == self.length
        return self.pos, float(done), done, {"success": done}

    @staticmethod
    def from_dict(info):
        return CorridorEnv(info["length"])
'''

FILES = {
    "rllm/agents/corridor_agent.py": AGENT,
    "rllm/agents/system_prompts.py": 'CORRIDOR_PROMPT = "Walk right to the end. Reply Left or Right."\n',
    "rllm/environments/corridor/__init__.py": "",
    "rllm/environments/corridor/corridor.py": ENV,
}


def write(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture(autouse=True)
def clean_rllm(monkeypatch):
    """Each test starts and ends with no `rllm` module, hook or folder around."""
    def forget():
        remove_rllm_shim()
        for name in [n for n in sys.modules if n == "rllm" or n.startswith("rllm.")]:
            del sys.modules[name]
        importlib.invalidate_caches()

    forget()
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    forget()


def script(prompt, call):
    # Bumps into the wall once (Left at 0), then walks right.
    return "I bump. Left" if call == 0 else "Going Right"


def test_agent_files_in_a_folder_run_unchanged_with_a_window_history(tmp_path):
    write(tmp_path / "vendor", FILES)
    (tmp_path / "vendor" / "rllm" / "environments" / "__init__.py").write_text("raise ImportError('heavy deps')\n")
    sys.path.insert(0, str(tmp_path / "vendor"))
    assert not rllm_installed()  # a folder named rllm is not an installed rLLM
    assert install_rllm_shim() is True
    from rllm.agents.corridor_agent import CorridorAgent
    from rllm.environments.corridor.corridor import CorridorEnv

    agents = []

    def agent_class(**kwargs):
        agents.append(CorridorAgent(**kwargs))
        return agents[-1]

    agent_factory, env_factory = rllm_factories(agent_class, CorridorEnv, {"use_accumulate_history": False},
                                                {"length": 3}, max_steps=6)
    policy = ScriptedPolicy(TOK, script)
    wf = ErlWorkflow(agent_factory, env_factory, policy, ErlConfig(max_turns=6))
    traj = asyncio.run(wf.attempt({"task_id": "c"}, "attempt1"))
    # Left (stays at 0), Right, Right, Right: 4 calls, the goal at 3.
    assert len(traj.steps) == 4 and traj.reward == 1.0 and traj.info["success"]
    prompts = [TOK.decode(s.prompt_ids) for s in traj.steps]
    assert prompts == policy.calls
    system = {"role": "system", "content": "Walk right to the end. Reply Left or Right."}
    users = ["Position: 0 Steps left: 6", "Position: 0 (you did not move) Steps left: 5",
             "Position: 1 Steps left: 4", "Position: 2 Steps left: 3"]
    for prompt, user in zip(prompts, users):  # [system, latest observation] on every call
        assert prompt == TOK.apply_chat_template([system, {"role": "user", "content": user}],
                                                 add_generation_prompt=True, tokenize=False)
    assert len(trajectory_to_sequences(traj)) == 4  # no call extends the last: 4 sequences
    # The adapter did what rLLM's engine does with the agent's own trajectory.
    steps = agents[0].trajectory.steps
    assert [s.reward for s in steps] == [0.0, 0.0, 0.0, 1.0] and steps[-1].done
    assert steps[-1].info == {"success": True, "max_steps": 6}
    assert type(steps[0]).__name__ == "RllmStep"


def test_a_missing_rllm_module_is_named(tmp_path):
    files = {k: v for k, v in FILES.items() if "environments/corridor" not in k}
    sys.path.insert(0, str(write(tmp_path, files)))
    install_rllm_shim()
    with pytest.raises(ModuleNotFoundError, match=r"rllm\.environments\.corridor\b.*rllm/environments/corridor\.py"):
        importlib.import_module("rllm.agents.corridor_agent")
    # A folder added to sys.path later is searched too.
    sys.path.append(str(write(tmp_path / "later", {k: FILES[k] for k in FILES if "corridor/" in k})))
    assert importlib.import_module("rllm.agents.corridor_agent").CorridorAgent


def test_an_installed_rllm_is_used_as_it_is(tmp_path):
    installed = {
        "rllm/__init__.py": "",
        "rllm/types.py": '''
            from dataclasses import dataclass, field

            @dataclass
            class Action:
                action: object = None

            @dataclass
            class Step:
                chat_completions: list = field(default_factory=list)
                observation: object = None
                action: object = None
                model_response: str = ""
                reward: float = 0.0
                done: bool = False
                info: dict = field(default_factory=dict)

            @dataclass
            class Trajectory:
                steps: list = field(default_factory=list)
            ''',
        "rllm/agents/__init__.py": "",
        "rllm/agents/agent.py": '''
            from abc import ABC, abstractmethod
            from rllm.types import Action, Step, Trajectory

            class BaseAgent(ABC):
                installed = True

                @abstractmethod
                def reset(self): ...

                def get_current_state(self):
                    return self.trajectory.steps[-1] if self.trajectory.steps else None
            ''',
        "rllm/environments/__init__.py": "",
        "rllm/environments/base/__init__.py": "",
        "rllm/environments/base/base_env.py": '''
            class BaseEnv:
                installed = True

                def close(self):
                    pass

                @staticmethod
                def is_multithread_safe():
                    return True
            ''',
    }
    sys.path.insert(0, str(write(tmp_path, {**installed, **FILES})))
    assert rllm_installed() and install_rllm_shim() is False
    from rllm.agents.corridor_agent import CorridorAgent
    from rllm.environments.corridor.corridor import CorridorEnv

    assert CorridorAgent.installed and CorridorEnv.installed
    agent_factory, env_factory = rllm_factories(CorridorAgent, CorridorEnv, {}, {"length": 1}, max_steps=2)
    wf = ErlWorkflow(agent_factory, env_factory, ScriptedPolicy(TOK, lambda p, i: "Right"), ErlConfig(max_turns=2))
    traj = asyncio.run(wf.attempt({"task_id": "c"}, "attempt1"))
    # rLLM's own Action class (not erl's) was unwrapped on the way to env.step.
    assert sys.modules["rllm.types"].Action is not Action
    assert traj.reward == 1.0 and traj.steps[0].action == "2"
    # Without the adapter too: run_attempt unwraps any Action class itself.
    wf = ErlWorkflow(lambda t: CorridorAgent(), lambda t: CorridorEnv(1), ScriptedPolicy(TOK, lambda p, i: "Right"),
                     ErlConfig(max_turns=2))
    assert asyncio.run(wf.attempt({"task_id": "c"}, "attempt1")).steps[0].action == "2"


def test_from_dict_is_required():
    with pytest.raises(TypeError, match="from_dict"):
        rllm_factories(object, object)


def test_a_tool_agent_with_tool_messages_and_tool_call_actions():
    """The shape of rLLM's ToolAgent / ToolEnvironment pair: the first observation is
    {"question"}, actions are lists of OpenAI tool calls (a "finish" call answers), tool
    results come back as {"tool_outputs": {call id: text}} and become "tool" messages."""
    install_rllm_shim()
    from rllm.agents.agent import BaseAgent
    from rllm.environments.base.base_env import BaseEnv
    from rllm.types import Action, Step, Trajectory

    class LookupAgent(BaseAgent):
        def reset(self):
            self._trajectory, self.messages = Trajectory(), [{"role": "system", "content": "Use lookup."}]

        def update_from_env(self, observation, reward, done, info, **kwargs):
            if "question" in observation:
                self.messages.append({"role": "user", "content": observation["question"]})
            for call_id, text in observation.get("tool_outputs", {}).items():
                self.messages.append({"role": "tool", "content": text, "tool_call_id": call_id})

        def update_from_model(self, response, **kwargs):
            calls = [{"id": f"c{len(self._trajectory.steps)}", "type": "function",
                      "function": json.loads(m)} for m in re.findall(r"<tool_call>(.*?)</tool_call>", response, re.DOTALL)]
            calls = calls or [{"id": "end", "type": "function",
                               "function": {"name": "finish", "arguments": {"response": response}}}]
            self.messages.append({"role": "assistant", "content": response})
            self._trajectory.steps.append(Step(model_response=response, action=calls))
            return Action(action=calls)

        @property
        def chat_completions(self):
            return self.messages

        @property
        def trajectory(self):
            return self._trajectory

    class LookupEnv(BaseEnv):
        def reset(self):
            return {"question": "What is the code of box 7?"}, {}

        def step(self, action):
            call = action[0]
            if call["function"]["name"] == "finish":
                ok = call["function"]["arguments"]["response"] == "4721"
                return {}, float(ok), True, {"success": ok}
            return {"tool_outputs": {call["id"]: "box 7 holds code 4721"}}, 0.0, False, {}

        @staticmethod
        def from_dict(info):
            return LookupEnv()

    def script(prompt, call):
        return '<tool_call>{"name": "lookup", "arguments": {"box": 7}}</tool_call>' if call == 0 else "4721"

    agent_factory, env_factory = rllm_factories(LookupAgent, LookupEnv)
    policy = ScriptedPolicy(TOK, script)
    wf = ErlWorkflow(agent_factory, env_factory, policy, ErlConfig(max_turns=4))
    traj = asyncio.run(wf.attempt({"task_id": "box"}, "attempt1"))
    assert traj.reward == 1.0 and len(traj.steps) == 2
    assert "<tool_response>\nbox 7 holds code 4721\n</tool_response>" in policy.calls[1]
    (seq,) = trajectory_to_sequences(traj)  # only appended to: one sequence
    trained = TOK.decode([t for t, m in zip(seq.response_ids, seq.response_mask) if m])
    assert trained == script("", 0) + "<|im_end|>" + "4721<|im_end|>"
