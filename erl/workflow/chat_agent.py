"""A generic multi-turn chat agent for text environments (rLLM's BaseAgent shape).

It keeps the chat: system prompt, each observation as a user turn, each model reply as an
assistant turn, and hands the raw reply to the environment, which parses its own actions.
"""

from __future__ import annotations

from typing import Any

from erl.core.interfaces import Action, BaseAgent
from erl.core.types import Step, Trajectory


class ChatAgent(BaseAgent):
    def __init__(self, system_prompt: str | None = None, observation_template: str = "{observation}"):
        self.system_prompt = system_prompt
        self.observation_template = observation_template
        self.reset()

    def reset(self) -> None:
        self._messages: list[dict] = []
        if self.system_prompt:
            self._messages.append({"role": "system", "content": self.system_prompt})
        self._trajectory = Trajectory(name="agent")

    def update_from_env(self, observation: Any, reward: float, done: bool, info: dict, **kw) -> None:
        if self._trajectory.steps:
            last = self._trajectory.steps[-1]
            last.observation, last.reward, last.done, last.info = str(observation), reward, done, dict(info)
        if not done:
            text = self.observation_template.format(observation=observation)
            self._messages.append({"role": "user", "content": text})

    def update_from_model(self, response: str, **kw) -> Action:
        self._messages.append({"role": "assistant", "content": response})
        self._trajectory.steps.append(Step(messages=list(self._messages[:-1]), response=response, action=response))
        return Action(action=response)

    @property
    def chat_completions(self) -> list[dict]:
        return self._messages

    @property
    def trajectory(self) -> Trajectory:
        return self._trajectory
