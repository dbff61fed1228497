"""Agent / environment / policy interfaces, shaped like rLLM's (ERL_SPEC section 8).

An rLLM agent or env plugs in as it is: these are structural protocols, nothing to inherit.
`BaseAgent` and `BaseEnv` are small abstract classes for people who like a base class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from erl.core.types import Step, Trajectory


@dataclass
class Action:
    """What an agent hands to the environment (rLLM's Action)."""

    action: Any = None


def unwrap_action(action: Any) -> Any:
    """The payload of erl's or rLLM's Action (any class named Action with `.action`): real
    rLLM's Action is another class than this one."""
    if isinstance(action, Action) or (type(action).__name__ == "Action" and hasattr(action, "action")):
        return action.action
    return action


@runtime_checkable
class AgentLike(Protocol):
    def reset(self) -> None: ...
    def update_from_env(self, observation: Any, reward: float, done: bool, info: dict, **kw) -> None: ...
    def update_from_model(self, response: str, **kw) -> Action: ...
    @property
    def chat_completions(self) -> list[dict]: ...
    @property
    def trajectory(self) -> Trajectory: ...


@runtime_checkable
class EnvLike(Protocol):
    def reset(self) -> tuple[Any, dict]: ...
    def step(self, action: Any) -> tuple[Any, float, bool, dict]: ...
    def close(self) -> None: ...


class BaseAgent(ABC):
    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update_from_env(self, observation: Any, reward: float, done: bool, info: dict, **kw) -> None: ...

    @abstractmethod
    def update_from_model(self, response: str, **kw) -> Action: ...

    @property
    @abstractmethod
    def chat_completions(self) -> list[dict]: ...

    @property
    @abstractmethod
    def trajectory(self) -> Trajectory: ...

    def get_current_state(self) -> Step | None:
        steps = self.trajectory.steps
        return steps[-1] if steps else None


class BaseEnv(ABC):
    """Text environment. `step` takes the raw action (usually model text) and never raises on bad input."""

    idx: Any = None

    @abstractmethod
    def reset(self) -> tuple[Any, dict]: ...

    @abstractmethod
    def step(self, action: Any) -> tuple[Any, float, bool, dict]: ...

    def close(self) -> None:
        pass

    @staticmethod
    def from_dict(info: dict) -> BaseEnv:
        raise NotImplementedError


@dataclass
class Generation:
    """One sampled completion: token ids, their log-probs under the sampler, and the text."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str = "stop"  # "stop" (end token) or "length"


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    extra: dict = field(default_factory=dict)


@runtime_checkable
class AttemptRunner(Protocol):
    """Runs one attempt of some agent at a task and returns it as a Trajectory.

    This is the seam that lets ErlWorkflow wrap *any* agent: an rLLM-style agent/env pair
    (erl.workflow.attempt.EnvAttemptRunner), a LangGraph graph, an OpenAI-client agent.
    The returned trajectory carries `name`, the model calls as `steps` (token ids and
    log-probs, the text, what the environment or tools answered), `reward`, and in `info`:
    `success` (bool), `messages` (the chat the attempt started from, guidance included),
    `prompt_ids` and `plain_prompt_ids` (the first prompt with and without guidance:
    consolidation re-bases attempt 2 from one onto the other).
    """

    async def __call__(self, task: dict, *, name: str, guidance: str | None, policy: Policy,
                       chat: Any, params: SamplingParams, config: Any) -> Trajectory: ...


@runtime_checkable
class Policy(Protocol):
    """Anything that samples completions token-in, token-out.

    `tokenizer` is a Hugging Face tokenizer with a chat template; `generate` is async so
    that hundreds of episodes can wait on one batching engine at the same time.
    """

    tokenizer: Any

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation: ...
