"""Run one attempt (a whole multi-turn trajectory) of any rLLM-shaped agent in any env."""

from __future__ import annotations

import inspect
import numbers
from typing import Any

from erl.core.gating import is_reward
from erl.core.interfaces import Policy, SamplingParams, unwrap_action
from erl.core.reflection import apply_guidance
from erl.core.types import Step, Trajectory
from erl.models.chat import ChatTokenizer
from erl.rollout.turns import TurnPrompts


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _info(env: Any, call: str, info: Any) -> dict:
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise TypeError(f"{type(env).__name__}.{call} returned info of type {type(info).__name__}; an env's info is a dict")
    return info


def checked_reset(env: Any, result: Any) -> tuple[Any, dict]:
    """env.reset()'s (observation, info), or a TypeError naming the env and what the contract is
    (rLLM's BaseEnv, as erl/envs/base.py): a bare observation had failed as "expected 2"."""
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(f"{type(env).__name__}.reset() must return (observation, info), got {type(result).__name__}"
                        + (f" of {len(result)}" if isinstance(result, tuple) else ""))
    return result[0], _info(env, "reset()", result[1])


def checked_step(env: Any, result: Any) -> tuple[Any, float, bool, dict]:
    """env.step()'s (observation, reward, done, info) with a finite number as the reward, or a
    TypeError / ValueError naming the env: a reward of None, "good" or NaN had surfaced as
    float()'s message, or as a non-finite loss three steps later."""
    if not (isinstance(result, tuple) and len(result) == 4):
        hint = (": Gymnasium's (obs, reward, terminated, truncated, info) is not this API; return "
                "(obs, reward, terminated or truncated, info)") if isinstance(result, tuple) and len(result) == 5 else ""
        raise TypeError(f"{type(env).__name__}.step() must return (observation, reward, done, info), got "
                        f"{type(result).__name__}" + (f" of {len(result)}" if isinstance(result, tuple) else "") + hint)
    observation, reward, done, info = result
    if not is_reward(reward):
        if isinstance(reward, numbers.Real) and not isinstance(reward, bool):  # a number, but nan or inf
            raise ValueError(f"{type(env).__name__}.step() returned a reward of {reward}; a reward is a finite number")
        raise TypeError(f"{type(env).__name__}.step() returned a reward of type {type(reward).__name__} ({reward!r}); "
                        "a reward is a number")
    return observation, float(reward), bool(done), _info(env, "step()", info)


async def run_attempt(
    agent: Any,
    env: Any,
    policy: Policy,
    chat: ChatTokenizer,
    params: SamplingParams,
    *,
    name: str,
    task: dict,
    guidance: str | None = None,
    placement: str = "append_system",
    max_turns: int = 8,
    max_context_tokens: int | None = None,
) -> Trajectory:
    """Attempt the task once. `guidance` (a reflection) is put into the system prompt.

    Every model call's prompt is the agent's `chat_completions` at that moment (guidance
    placed into it), tokenised by erl.rollout.turns: an agent that only appends extends
    one token sequence; one that keeps a window or rewrites its history starts a new
    sequence where the chat stops extending. `info["plain_prompt_ids"]` is the first
    prompt without guidance: consolidation re-bases attempt 2 onto it.
    """
    agent.reset()
    observation, info = checked_reset(env, await _maybe_await(env.reset()))
    agent.update_from_env(observation, 0.0, False, info)
    turns = TurnPrompts(chat)
    history = list(agent.chat_completions)
    messages = apply_guidance(history, guidance, placement)
    ids = await turns.prompt_ids_async(messages, plain=history if guidance else None)
    traj = Trajectory(name=name, task=task)
    traj.info["prompt_ids"] = list(ids)
    traj.info["plain_prompt_ids"] = list(turns.plain_ids) if guidance else list(ids)
    traj.info["messages"] = messages
    traj.info["truncated"] = False
    for _ in range(max_turns):
        gen = await policy.generate(list(ids), params)
        step = Step(prompt_ids=list(ids), response_ids=list(gen.token_ids), logprobs=list(gen.logprobs),
                    messages=messages, response=gen.text)
        if turns.plain_ids is not None:
            step.info["plain_prompt_ids"] = turns.plain_ids
        traj.steps.append(step)
        turns.replied(step, {"role": "assistant", "content": gen.text})
        action = agent.update_from_model(gen.text)
        action = unwrap_action(action)
        observation, reward, done, info = checked_step(env, await _maybe_await(env.step(action)))
        agent.update_from_env(observation, reward, done, info)
        step.action, step.observation, step.reward, step.done = action, str(observation), reward, done
        step.info.update(info)
        if done:
            break
        history = list(agent.chat_completions)
        messages = apply_guidance(history, guidance, placement)
        ids = await turns.prompt_ids_async(messages, plain=history if guidance else None)
        if max_context_tokens is not None and len(ids) >= max_context_tokens:
            traj.info["truncated"] = True  # the context is full: the attempt ends unfinished
            break
    traj.reward = sum(s.reward for s in traj.steps)
    traj.info["success"] = bool(traj.steps and traj.steps[-1].info.get("success", traj.reward > 0))
    traj.info["turns"] = len(traj.steps)
    env.close()
    return traj


class EnvAttemptRunner:
    """The default AttemptRunner: a fresh rLLM-shaped agent and env per attempt, so
    attempt 2 starts from the same initial state as attempt 1."""

    def __init__(self, agent_factory: Any, env_factory: Any, max_context_tokens: int | None = None):
        self.agent_factory = agent_factory
        self.env_factory = env_factory
        self.max_context_tokens = max_context_tokens

    async def __call__(self, task: dict, *, name: str, guidance: str | None, policy: Policy,
                       chat: ChatTokenizer, params: SamplingParams, config: Any) -> Trajectory:
        return await run_attempt(
            self.agent_factory(task), self.env_factory(task), policy, chat, params, name=name, task=task,
            guidance=guidance, placement=config.reflection_placement, max_turns=config.max_turns,
            max_context_tokens=self.max_context_tokens)
