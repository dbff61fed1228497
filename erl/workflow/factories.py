"""Default agent for a registered text environment: a ChatAgent told only the action interface."""

from __future__ import annotations

from erl.workflow.chat_agent import ChatAgent


def chat_agent_for(task: dict) -> ChatAgent:
    from erl.envs.registry import env_class

    return ChatAgent(system_prompt=env_class(task.get("env")).system_prompt(task))
