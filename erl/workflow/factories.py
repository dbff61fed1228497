"""How a trainer gets its agent: the default ChatAgent on a registered text environment, or
any AttemptRunner named in the config (`runner: package.module:factory`)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from erl.core.config import ConfigError
from erl.workflow.chat_agent import ChatAgent


def chat_agent_for(task: dict) -> ChatAgent:
    from erl.envs.registry import env_class

    return ChatAgent(system_prompt=env_class(task.get("env")).system_prompt(task))


def load_runner(spec: Any) -> Any:
    """`"package.module:factory"` -> factory() -> an AttemptRunner (a LangGraph graph, an
    OpenAI-client agent); None or "" keeps the default chat agent on the env."""
    if spec in (None, ""):
        return None
    module, _, attr = str(spec).partition(":")
    if not attr:
        raise ConfigError(f"runner must look like 'package.module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"runner {spec!r} cannot be imported: {exc}") from exc
    runner = factory()
    if not (inspect.iscoroutinefunction(runner) or (callable(runner) and inspect.iscoroutinefunction(type(runner).__call__))):
        raise ConfigError(f"runner {spec!r}: the factory returned {type(runner).__name__}, not an AttemptRunner (an "
                          "async callable (task, *, name, guidance, policy, chat, params, config) -> Trajectory)")
    return runner
