"""rLLM-shaped agents and envs run through ErlWorkflow unchanged (rLLM itself is not on the
package index: these are written here against its method names, ERL_SPEC section 8)."""

import asyncio
import sys
import textwrap
import threading
import types
from dataclasses import dataclass

from erl.agents.rllm import (
    RllmAgentAdapter,
    RllmEnvAdapter,
    install_rllm_shim,
    remove_rllm_shim,
    rllm_factories,
    unwrap_action,
)
from erl.core.config import ErlConfig
from erl.core.interfaces import Action
from erl.core.reflection import GUIDANCE_HEADER
from erl.models.tiny import build_tiny_tokenizer
from erl.rollout.scripted import ScriptedPolicy
from erl.workflow.erl_workflow import ErlWorkflow

TOK = build_tiny_tokenizer()
TASK = {"task_id": "lock-1", "code": "4721"}


def script(prompt: str, call: int) -> str:
    """Guesses 1111 until the reflection says to read the hint; then types the hint."""
    if "You are a coach" in prompt:
        return "<prompt>The hint in the first message is the code; type it.</prompt>"
    return "<code>4721</code>" if GUIDANCE_HEADER in prompt else "<code>1111</code>"


class LockAgent:
    """Duck-typed rLLM agent: no base class at all, only rLLM's method names."""

    def __init__(self, system_prompt="Open the lock. Reply <code>NNNN</code>."):
        self.system_prompt = system_prompt
        self.reset()

    def reset(self):
        self.messages = [{"role": "system", "content": self.system_prompt}]
        self.steps = []

    def update_from_env(self, observation, reward, done, info, **kwargs):
        if not done:
            self.messages.append({"role": "user", "content": str(observation)})

    def update_from_model(self, response, **kwargs):
        self.messages.append({"role": "assistant", "content": response})
        code = response.split("<code>")[-1].split("</code>")[0]
        self.steps.append(response)
        return Action(action=code)

    @property
    def chat_completions(self):
        return self.messages

    @property
    def trajectory(self):
        return types.SimpleNamespace(steps=self.steps)


class LockEnv:
    """Duck-typed rLLM env: reset/step/close/from_dict, max two guesses."""

    seen: list = []

    def __init__(self, code):
        self.code, self.tries, self.idx = code, 0, None

    def reset(self):
        self.tries = 0
        return f"A lock. Hint: {self.code}", {}

    def step(self, action):
        LockEnv.seen.append(action)
        self.tries += 1
        ok = action == self.code
        return ("Open!" if ok else "Still locked."), float(ok), ok or self.tries >= 2, {"success": ok}

    def close(self):
        pass

    @staticmethod
    def from_dict(info):
        return LockEnv(info["code"])


def test_duck_typed_rllm_pair_runs_unchanged():
    LockEnv.seen = []
    wf = ErlWorkflow(lambda task: LockAgent(), LockEnv.from_dict, ScriptedPolicy(TOK, script), ErlConfig(max_turns=4))
    episode = asyncio.run(wf.run(dict(TASK), "lock-1:0"))
    first, reflection, second = episode.trajectories[:3]
    # attempt 1: two wrong guesses (the env ends it after 2 tries); attempt 2 opens it at once.
    assert len(first.steps) == 2 and first.reward == 0.0
    assert len(second.steps) == 1 and second.reward == 1.0 and reflection.reward == 1.0
    assert LockEnv.seen == ["1111", "1111", "4721"]  # Action.action reached env.step
    assert "type it" in TOK.decode(second.info["prompt_ids"])


RLLM_STYLE_SOURCE = textwrap.dedent('''
    import copy
    from rllm.agents.agent import Action, BaseAgent, Step, Trajectory
    from rllm.environments.base.base_env import BaseEnv


    class LockAgent(BaseAgent):
        def __init__(self, system_prompt):
            self.system_prompt = system_prompt
            self.reset()

        def reset(self):
            self._trajectory = Trajectory()
            self.messages = [{"role": "system", "content": self.system_prompt}]

        def update_from_env(self, observation, reward, done, info, **kwargs):
            if self._trajectory.steps:
                self._trajectory.steps[-1].reward = reward
            if not done:
                self.messages.append({"role": "user", "content": observation})

        def update_from_model(self, response, **kwargs):
            self.messages.append({"role": "assistant", "content": response})
            code = response.split("<code>")[-1].split("</code>")[0]
            step = Step(chat_completions=copy.deepcopy(self.messages), model_response=response, action=code)
            self._trajectory.steps.append(step)
            return Action(action=code)

        @property
        def chat_completions(self):
            return self.messages

        @property
        def trajectory(self):
            return self._trajectory


    class LockEnv(BaseEnv):
        def __init__(self, code, max_tries=2):
            self.code, self.max_tries, self.tries = code, max_tries, 0

        def reset(self):
            self.tries = 0
            return "A lock. Hint: " + self.code, {}

        def step(self, action):
            self.tries += 1
            self.last = action
            ok = action == self.code
            return ("Open!" if ok else "Still locked."), 0.0, ok or self.tries >= self.max_tries, {"success": ok}

        def compute_final_reward(self):
            return 1.0 if self.last == self.code else 0.0

        @staticmethod
        def from_dict(info):
            return LockEnv(info["code"], info.get("max_tries", 2))
''')


def test_rllm_source_files_import_and_run_through_the_shim():
    assert install_rllm_shim() is True
    module = types.ModuleType("rllm_style_lock")
    exec(compile(RLLM_STYLE_SOURCE, "rllm_style_lock.py", "exec"), module.__dict__)  # an rLLM file, unchanged
    steps_seen, step = [], module.LockEnv.step

    def watched_step(self, action):  # notes the thread each env step runs in
        steps_seen.append(threading.current_thread().name)
        return step(self, action)

    module.LockEnv.step = watched_step
    agent_factory, env_factory = rllm_factories(module.LockAgent, module.LockEnv, {"system_prompt": "Open the lock."},
                                                {"max_tries": 2})
    wf = ErlWorkflow(agent_factory, env_factory, ScriptedPolicy(TOK, script), ErlConfig(max_turns=4))
    episode = asyncio.run(wf.run(dict(TASK), "lock-1:0"))
    first, _, second = episode.trajectories[:3]
    # The env's own step reward is 0; compute_final_reward decides, as in rLLM's engine.
    assert first.reward == 0.0 and second.reward == 1.0 and second.info["success"]
    # BaseEnv.is_multithread_safe() is True: sync env steps ran in worker threads.
    assert steps_seen and all(name != threading.main_thread().name for name in steps_seen)
    assert sys.modules["rllm.agents.agent"].Action is Action  # erl's: run_attempt unwraps it itself
    remove_rllm_shim()


def test_foreign_action_classes_are_unwrapped():
    @dataclass
    class Action:  # real rLLM's Action is another class than erl's
        action: object = None

    class Agent(LockAgent):
        def update_from_model(self, response, **kwargs):
            return Action(super().update_from_model(response).action)

    LockEnv.seen = []
    agent = RllmAgentAdapter(Agent())
    assert agent.update_from_model("<code>4721</code>").action == "4721"
    assert unwrap_action(Action("x")) == "x" and unwrap_action("y") == "y"
    env = RllmEnvAdapter(LockEnv("4721"))
    assert env.threaded is False  # no is_multithread_safe(): stays on the loop
    assert asyncio.run(env.step("4721"))[1:3] == (1.0, True)
