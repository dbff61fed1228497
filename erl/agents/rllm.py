"""rLLM agents and environments in ErlWorkflow.

ErlWorkflow's default runner (erl.workflow.attempt.EnvAttemptRunner) drives an agent/env
pair with rLLM's own method names, so an rLLM-shaped pair runs as it is:

    rLLM (v0.2.x)                               erl
    ------------------------------------------  -----------------------------------------------
    BaseAgent.reset()                           called at the start of every attempt
    BaseAgent.update_from_env(obs, r, done, i)  same; first with reset()'s observation, r=0
    BaseAgent.chat_completions                  the chat rendered for the next model call;
                                                the reflection is placed into its system prompt
    BaseAgent.update_from_model(text) -> Action  same; Action.action goes to env.step
    BaseAgent.trajectory / get_current_state()  kept by the agent; erl records its own Steps
    BaseEnv.reset() -> (obs, info)              same (sync or async)
    BaseEnv.step(action) -> (obs, r, done, i)   same; info["success"] marks success, else r > 0
    BaseEnv.close(), BaseEnv.idx                same
    BaseEnv.from_dict(task)                     env_factory(task) (rLLM: from_dict({**task, **env_args}))
    BaseEnv.compute_final_reward()              RllmEnvAdapter: replaces the last step's reward
    AgentExecutionEngine(max_steps=...)         ErlConfig.max_turns
    Step.prompt_ids/response_ids/logprobs       erl.core.types.Step (same names), built by erl
    Trajectory(name="solver", steps, reward)    erl Trajectory named attempt1/reflection/attempt2/distill
    Workflow.run(task, uid) -> Episode (async)  ErlWorkflow.run(task, uid) -> Episode (async)
    trajectory reward = sum of step rewards     the same in run_attempt

Two pieces of glue, for code that imports rLLM itself:
  * `rllm_factories(agent_class, env_class, agent_args, env_args)` builds the factories the
    way rLLM's engine builds its agents and envs, wrapped so that an Action class other than
    erl's (real rLLM's) is unwrapped, synchronous thread-safe envs step in a worker thread
    (as rLLM's engine does) and `compute_final_reward` is honoured.
  * `install_rllm_shim()`: where rLLM is not installed (it is not on the package index), it
    registers `rllm.agents.agent` and `rllm.environments.base.base_env` modules holding
    rLLM-compatible classes, so agent and env files that import from rLLM load unchanged.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import types
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from erl.workflow.base import Action, BaseEnv


def unwrap_action(action: Any) -> Any:
    """The payload of erl's or rLLM's Action (any class named Action with `.action`)."""
    if isinstance(action, Action) or (type(action).__name__ == "Action" and hasattr(action, "action")):
        return action.action
    return action


class RllmAgentAdapter:
    """An rLLM agent as erl's AgentLike: only `update_from_model`'s Action is translated."""

    def __init__(self, agent: Any):
        self.agent = agent

    def reset(self) -> None:
        self.agent.reset()

    def update_from_env(self, observation: Any, reward: float, done: bool, info: dict, **kw) -> None:
        self.agent.update_from_env(observation=observation, reward=reward, done=done, info=info, **kw)

    def update_from_model(self, response: str, **kw) -> Action:
        return Action(unwrap_action(self.agent.update_from_model(response, **kw)))

    @property
    def chat_completions(self) -> list[dict]:
        return self.agent.chat_completions

    @property
    def trajectory(self) -> Any:
        return self.agent.trajectory


class RllmEnvAdapter:
    """An rLLM env as erl's EnvLike. Thread-safe sync envs run in a worker thread so a slow
    env does not stall the other episodes; `compute_final_reward()` (if the env has it)
    replaces the reward of the step that ends the episode, as in rLLM's engine."""

    def __init__(self, env: Any):
        self.env = env
        safe = getattr(env, "is_multithread_safe", None)
        self.threaded = bool(safe()) if callable(safe) else False

    @property
    def idx(self) -> Any:
        return getattr(self.env, "idx", None)

    async def _call(self, fn: Callable, *args: Any) -> Any:
        result = await asyncio.to_thread(fn, *args) if self.threaded else fn(*args)
        return await result if asyncio.iscoroutine(result) else result

    async def reset(self) -> tuple[Any, dict]:
        observation, info = await self._call(self.env.reset)
        return observation, dict(info or {})

    async def step(self, action: Any) -> tuple[Any, float, bool, dict]:
        observation, reward, done, info = await self._call(self.env.step, action)
        if done and hasattr(self.env, "compute_final_reward"):
            reward = await self._call(self.env.compute_final_reward)
        return observation, float(reward), bool(done), dict(info or {})

    def close(self) -> None:
        self.env.close()


def rllm_factories(agent_class: Callable, env_class: Any, agent_args: dict | None = None,
                   env_args: dict | None = None) -> tuple[Callable[[dict], Any], Callable[[dict], Any]]:
    """(agent_factory, env_factory) for ErlWorkflow, built like rLLM's execution engine:
    `agent_class(**agent_args)` and `env_class.from_dict({**task, **env_args})`."""
    agent_args, env_args = dict(agent_args or {}), dict(env_args or {})

    def agent_factory(task: dict) -> RllmAgentAdapter:
        return RllmAgentAdapter(agent_class(**agent_args))

    def env_factory(task: dict) -> RllmEnvAdapter:
        return RllmEnvAdapter(env_class.from_dict({**task, **env_args}))

    return agent_factory, env_factory


# ---------------------------------------------------------------- rLLM-compatible classes
# Field and method names as in rLLM v0.2.x, so that code written against rLLM runs here.


@dataclass
class RllmStep:
    prompt_ids: list = field(default_factory=list)
    response_ids: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    chat_completions: list = field(default_factory=list)
    observation: Any = None
    thought: str = ""
    action: Any = None
    model_response: str = ""
    model_output: Any = None
    info: dict = field(default_factory=dict)
    reward: float = 0.0
    done: bool = False
    mc_return: float = 0.0
    advantage: Any = None


@dataclass
class RllmTrajectory:
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    name: str = "default_traj_name"
    task: Any = None
    steps: list = field(default_factory=list)
    reward: float | None = None
    info: dict = field(default_factory=dict)


class RllmBaseAgent(ABC):
    @property
    def chat_completions(self) -> list[dict]:
        return []

    @property
    def trajectory(self) -> RllmTrajectory:
        return RllmTrajectory()

    def update_from_env(self, observation: Any, reward: float, done: bool, info: dict, **kwargs) -> None:
        raise NotImplementedError("an rLLM agent implements update_from_env")

    def update_from_model(self, response: str, **kwargs) -> Action:
        raise NotImplementedError("an rLLM agent implements update_from_model")

    @abstractmethod
    def reset(self) -> None: ...

    def get_current_state(self) -> RllmStep | None:
        steps = self.trajectory.steps
        return steps[-1] if steps else None


class RllmBaseEnv(BaseEnv):
    """rLLM's BaseEnv is ours plus a thread-safety flag."""

    @staticmethod
    def is_multithread_safe() -> bool:
        return True


def install_rllm_shim() -> bool:
    """Register rLLM-compatible `rllm.agents.agent` and `rllm.environments.base.base_env`
    modules. Does nothing (returns False) where the real rLLM is importable."""
    if "rllm" in sys.modules and not getattr(sys.modules["rllm"], "__erl_shim__", False):
        return False
    if "rllm" not in sys.modules and importlib.util.find_spec("rllm") is not None:
        return False
    contents = {
        "rllm": {}, "rllm.agents": {}, "rllm.environments": {}, "rllm.environments.base": {},
        "rllm.agents.agent": {"Action": Action, "Step": RllmStep, "Trajectory": RllmTrajectory,
                              "BaseAgent": RllmBaseAgent},
        "rllm.environments.base.base_env": {"BaseEnv": RllmBaseEnv},
    }
    for name, attrs in contents.items():
        module = sys.modules.get(name) or types.ModuleType(name)
        module.__dict__.update(attrs, __erl_shim__=True)
        if not attrs:
            module.__path__ = []  # a package, so that submodule imports resolve
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    return True
