"""ErlWorkflow: attempt 1 -> gate -> reflection -> attempt 2 -> memory, for any agent.

One `run(task, uid)` returns one Episode whose trajectories are named after their
segments (attempt1, reflection, attempt2, distill) and carry the segment rewards, so
`erl.core.samples.episode_to_samples` turns it into training rows without knowing how
the episode went. The trainer runs n episodes per task to form GRPO groups.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from erl.core.config import ErlConfig
from erl.core.gating import segment_reward, should_distill, should_reflect, should_store
from erl.core.interfaces import AttemptRunner, Policy, SamplingParams
from erl.core.reflection import parse_reflection, render_feedback_guidance, render_reflection_request
from erl.core.samples import rebase_steps
from erl.core.types import Episode, Segment, Step, Trajectory
from erl.models.chat import ChatTokenizer
from erl.workflow.attempt import EnvAttemptRunner


def _task_query(attempt: Trajectory) -> str:
    """The text that describes this task instance (its first observation) for memory retrieval."""
    messages = attempt.info.get("messages") or []
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    return users[0] if users else ""


class ErlWorkflow:
    """Wraps any agent into the ERL loop.

    Either agent_factory(task) -> agent and env_factory(task) -> env (rLLM shapes; a fresh
    pair per attempt), or `runner`: any AttemptRunner (a LangGraph graph, an OpenAI-client
    agent). `memory` is a ReflectionMemory, its Ray client, or None (no memory).
    """

    def __init__(self, agent_factory: Callable[[dict], Any] | None = None,
                 env_factory: Callable[[dict], Any] | None = None, policy: Policy | None = None,
                 config: ErlConfig | None = None, memory: Any = None,
                 max_context_tokens: int | None = None, runner: AttemptRunner | None = None):
        if policy is None:
            raise ValueError("ErlWorkflow needs a policy")
        if runner is None:
            if agent_factory is None or env_factory is None:
                raise ValueError("ErlWorkflow needs agent_factory and env_factory, or a runner")
            runner = EnvAttemptRunner(agent_factory, env_factory, max_context_tokens)
        elif getattr(runner, "max_context_tokens", 0) is None and max_context_tokens is not None:
            runner.max_context_tokens = max_context_tokens  # the trainer's limit, unless the runner has its own
        self.runner = runner
        self.policy = policy
        self.config = config or ErlConfig()
        self.memory = memory
        self.chat = ChatTokenizer(policy.tokenizer)
        self.step = 0  # the trainer's step, recorded with each memory entry

    def _params(self, max_new_tokens: int, temperature: float | None = None) -> SamplingParams:
        t = self.config.temperature if temperature is None else temperature
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=t)

    async def attempt(self, task: dict, name: str, guidance: str | None = None,
                      temperature: float | None = None) -> Trajectory:
        run = self.runner(task, name=name, guidance=guidance, policy=self.policy, chat=self.chat,
                          params=self._params(self.config.max_new_tokens, temperature), config=self.config)
        if not inspect.isawaitable(run):
            raise TypeError(f"the runner {type(self.runner).__name__} returned {type(run).__name__}: an AttemptRunner "
                            "is async (erl.core.interfaces.AttemptRunner)")
        traj = await run
        if not isinstance(traj, Trajectory) or not isinstance(traj.info.get("success"), bool):
            got = type(traj).__name__ if not isinstance(traj, Trajectory) else "a Trajectory without info['success'] (a bool)"
            raise TypeError(f"the runner {type(self.runner).__name__} returned {got}: an attempt is a Trajectory with "
                            "reward and info['success'] (erl.core.interfaces.AttemptRunner)")
        return traj

    async def reflect(self, task: dict, first: Trajectory, memories: list[str]) -> tuple[Trajectory, Any]:
        cfg = self.config
        messages = render_reflection_request(first.info.get("messages", []), first, first.reward,
                                             memories, tag=cfg.reflection_tag)
        ids = await self.chat.prompt_ids_async(messages)
        gen = await self.policy.generate(ids, self._params(cfg.max_reflection_tokens))
        traj = Trajectory(name=Segment.REFLECTION.value, task=task, steps=[Step(
            prompt_ids=ids, response_ids=list(gen.token_ids), logprobs=list(gen.logprobs),
            messages=messages, response=gen.text)])
        parsed = parse_reflection(gen.text, cfg.reflection_tag, cfg.max_reflection_chars,
                                  require_tag=cfg.reflection_require_tag)
        traj.info.update(parsed=parsed.ok, parse_error=parsed.error, reflection=parsed.text,
                         memory_used=len(memories))
        return traj, parsed

    async def _memory_call(self, method: str, *args, **kwargs) -> Any:
        result = getattr(self.memory, method)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    async def run(self, task: dict, uid: str) -> Episode:
        cfg = self.config
        episode = Episode(id=uid, task=task)
        first = await self.attempt(task, Segment.ATTEMPT1.value)
        r1 = first.reward
        first.reward = segment_reward(Segment.ATTEMPT1, r1, None)
        episode.trajectories.append(first)
        m = {"r1": r1, "success1": float(first.info["success"]), "reflected": 0.0,
             "reflection_parsed": 0.0, "reflection_parse_fail": 0.0, "memory_hits": 0.0,
             "memory_stored": 0.0, "attempt2": 0.0, "distilled": 0.0}
        episode.metrics = m
        episode.is_correct = bool(first.info["success"])
        if cfg.mode == "rlvr" or not should_reflect(r1, cfg.tau):
            return episode

        key = str(task.get("memory_key", task.get("env", "default")))
        query = _task_query(first)
        use_memory = cfg.uses_memory and self.memory is not None
        guidance: str | None
        reflection: Trajectory | None = None
        if cfg.uses_reflection:
            memories = []
            if use_memory and cfg.memory_top_k > 0:
                entries = await self._memory_call("retrieve", key, query, cfg.memory_top_k)
                memories = [e.text if hasattr(e, "text") else str(e) for e in entries]
            m["memory_hits"] = float(len(memories))
            m["reflected"] = 1.0
            reflection, parsed = await self.reflect(task, first, memories)
            episode.trajectories.append(reflection)
            if not parsed.ok:
                # A reflection that cannot be read earns 0 and gets no second attempt.
                reflection.reward = segment_reward(Segment.REFLECTION, r1, None)
                m["reflection_parse_fail"] = 1.0
                episode.info["parse_error"] = parsed.error
                return episode
            m["reflection_parsed"] = 1.0
            guidance = parsed.text
        else:  # no_reflection ablation: the second attempt sees the raw first attempt
            guidance = render_feedback_guidance(first, r1)

        second = await self.attempt(task, Segment.ATTEMPT2.value, guidance=guidance)
        r2 = second.reward
        second.reward = segment_reward(Segment.ATTEMPT2, r1, r2)
        episode.trajectories.append(second)
        m.update(attempt2=1.0, r2=r2, success2=float(second.info["success"]))
        episode.is_correct = bool(second.info["success"])
        if reflection is not None:
            reflection.reward = segment_reward(Segment.REFLECTION, r1, r2)
            if use_memory and should_store(r2, cfg.store_threshold):
                stored = await self._memory_call("add", guidance, key, r2, self.step, query)
                m["memory_stored"] = float(bool(stored))
        if cfg.distill_mode != "none" and should_distill(r2):
            steps = rebase_steps(second.steps, second.info["prompt_ids"], second.info["plain_prompt_ids"])
            if steps:
                episode.trajectories.append(Trajectory(
                    name=Segment.DISTILL.value, task=task, steps=steps,
                    reward=segment_reward(Segment.DISTILL, r1, r2)))
                m["distilled"] = 1.0
        return episode
