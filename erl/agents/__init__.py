"""Existing agents as ERL attempts: each module provides an AttemptRunner for ErlWorkflow.

    erl.agents.langgraph      LangGraph / LangChain graphs (PolicyChatModel, LangGraphAttemptRunner)
    erl.agents.openai_server  agents that use the `openai` client (PolicyServer, OpenAIAttemptRunner)
    erl.agents.rllm           rLLM agent/env pairs (rllm_factories, install_rllm_shim, the name mapping)
    erl.agents.rllm_compat    rLLM's own agent/env files, unchanged, with or without rLLM installed
    erl.agents.recorder       the framework-free part: token-exact recording of chat calls
    erl.agents.messages       OpenAI-format messages and tool-call parsing

The first two need the `langgraph` extra (pip install "erl[langgraph]"), so they are not
imported here.
"""

from erl.agents.recorder import AttemptRecorder, parse_tool_calls
from erl.agents.rllm import install_rllm_shim, rllm_factories

__all__ = ["AttemptRecorder", "install_rllm_shim", "parse_tool_calls", "rllm_factories"]
