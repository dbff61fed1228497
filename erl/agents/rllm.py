"""rLLM agents and environments in ErlWorkflow.

ErlWorkflow's default runner (erl.workflow.attempt.EnvAttemptRunner) drives an agent/env
pair with rLLM's own method names, so an rLLM-shaped pair runs as it is:

    rLLM (v0.2.x)                               erl
    ------------------------------------------  -----------------------------------------------
    BaseAgent.reset()                           called at the start of every attempt
    BaseAgent.update_from_env(obs, r, done, i)  same; first with reset()'s observation, r=0
    BaseAgent.chat_completions                  read before every model call: the prompt is
                                                exactly this chat (any shape: growing, a window,
                                                rewritten); the reflection goes into its system prompt
    BaseAgent.update_from_model(text) -> Action  same; Action.action goes to env.step
    BaseAgent.trajectory / get_current_state()  kept by the agent; after each env step its current
                                                step gets reward, done and info as in rLLM's engine;
                                                erl records its own Steps for training
    BaseEnv.reset() -> (obs, info)              same (sync or async)
    BaseEnv.step(action) -> (obs, r, done, i)   same; info["success"] marks success, else r > 0
    BaseEnv.close(), BaseEnv.idx                same
    BaseEnv.is_multithread_safe()               True: a sync env runs in a worker thread
    info["max_steps"]                           added when rllm_factories(max_steps=...) is given
    BaseEnv.from_dict(task)                     env_factory(task) (rLLM: from_dict({**task, **env_args}))
    BaseEnv.compute_final_reward()              RllmEnvAdapter: replaces the last step's reward
    AgentExecutionEngine(max_steps=...)         ErlConfig.max_turns
    Step.prompt_ids/response_ids/logprobs       erl.core.types.Step (same names), built by erl
    Trajectory(name="solver", steps, reward)    erl Trajectory named attempt1/reflection/attempt2/distill
    Workflow.run(task, uid) -> Episode (async)  ErlWorkflow.run(task, uid) -> Episode (async)
    trajectory reward = sum of step rewards     the same in run_attempt

Two pieces of glue, for code that imports rLLM itself:
  * `rllm_factories(agent_class, env_class, agent_args, env_args, max_steps)` builds the
    factories the way rLLM's engine builds its agents and envs, wrapped so that an Action
    class other than erl's (real rLLM's) is unwrapped, synchronous thread-safe envs step in
    a worker thread (as rLLM's engine does) and `compute_final_reward` is honoured.
  * `install_rllm_shim()` (erl.agents.rllm_compat): rLLM's own agent and env files import
    unchanged, whether rLLM is installed or its files sit in a folder on sys.path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from erl.agents.rllm_compat import install_rllm_shim, remove_rllm_shim, rllm_installed
from erl.core.interfaces import Action, unwrap_action

__all__ = ["RllmAgentAdapter", "RllmEnvAdapter", "install_rllm_shim", "remove_rllm_shim", "rllm_factories",
           "rllm_installed", "unwrap_action"]


def _current_step(agent: Any) -> Any:
    get = getattr(agent, "get_current_state", None)
    if callable(get):
        return get()
    steps = getattr(getattr(agent, "trajectory", None), "steps", None)
    return steps[-1] if steps else None


class RllmAgentAdapter:
    """An rLLM agent as erl's AgentLike. `update_from_model`'s Action is unwrapped, and after
    each env step the agent's current step is given the reward, done flag and info, as
    rLLM's engine does (some agents leave that to the engine)."""

    def __init__(self, agent: Any):
        self.agent = agent
        self._acted = False

    def reset(self) -> None:
        self.agent.reset()
        self._acted = False

    def update_from_env(self, observation: Any, reward: float, done: bool, info: dict, **kw) -> None:
        self.agent.update_from_env(observation=observation, reward=reward, done=done, info=info, **kw)
        step = _current_step(self.agent) if self._acted else None
        if step is not None:
            step.reward, step.done = reward, done
            step.info.update(info)

    def update_from_model(self, response: str, **kw) -> Action:
        self._acted = True
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
    replaces the reward of the step that ends the episode, as in rLLM's engine.
    `max_steps` (rLLM's engine setting) is put into every info dict, where agents read it."""

    def __init__(self, env: Any, max_steps: int | None = None):
        self.env = env
        self.max_steps = max_steps
        safe = getattr(env, "is_multithread_safe", None)
        self.threaded = bool(safe()) if callable(safe) else False

    @property
    def idx(self) -> Any:
        return getattr(self.env, "idx", None)

    async def _call(self, fn: Callable, *args: Any) -> Any:
        result = await asyncio.to_thread(fn, *args) if self.threaded else fn(*args)
        return await result if asyncio.iscoroutine(result) else result

    def _info(self, info: Any) -> dict:
        info = dict(info or {})
        if self.max_steps is not None:
            info["max_steps"] = self.max_steps
        return info

    async def reset(self) -> tuple[Any, dict]:
        observation, info = await self._call(self.env.reset)
        return observation, self._info(info)

    async def step(self, action: Any) -> tuple[Any, float, bool, dict]:
        observation, reward, done, info = await self._call(self.env.step, action)
        if done and hasattr(self.env, "compute_final_reward"):
            reward = await self._call(self.env.compute_final_reward)
        return observation, float(reward), bool(done), self._info(info)

    def close(self) -> None:
        self.env.close()


def rllm_factories(agent_class: Callable, env_class: Any, agent_args: dict | None = None,
                   env_args: dict | None = None,
                   max_steps: int | None = None) -> tuple[Callable[[dict], Any], Callable[[dict], Any]]:
    """(agent_factory, env_factory) for ErlWorkflow, built like rLLM's execution engine:
    `agent_class(**agent_args)` and `env_class.from_dict({**task, **env_args})`. Pass
    `max_steps` (= ErlConfig.max_turns) for agents that read info["max_steps"]."""
    agent_args, env_args = dict(agent_args or {}), dict(env_args or {})
    if not callable(getattr(env_class, "from_dict", None)):
        raise TypeError(f"{getattr(env_class, '__name__', env_class)!r} has no from_dict(info): rLLM envs are "
                        "built with env_class.from_dict({**task, **env_args})")

    def agent_factory(task: dict) -> RllmAgentAdapter:
        return RllmAgentAdapter(agent_class(**agent_args))

    def env_factory(task: dict) -> RllmEnvAdapter:
        return RllmEnvAdapter(env_class.from_dict({**task, **env_args}), max_steps)

    return agent_factory, env_factory
