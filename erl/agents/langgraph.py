"""Train an existing LangGraph agent with ERL, unchanged.

The graph keeps its nodes, tools and edges; only its chat model is ours: `PolicyChatModel`
is a LangChain chat model backed by the trainer's policy that records every call (the
chat as rendered, generated ids, log-probs, tool calls) into the current attempt.
`LangGraphAttemptRunner` is the AttemptRunner that ErlWorkflow calls for each attempt:

    def build_graph(model):                 # the user's code, as it was
        ...
        return graph.compile()

    runner = LangGraphAttemptRunner(build_graph, reward_fn=my_reward)   # reward_fn(task, answer)
    workflow = ErlWorkflow(policy=policy, config=erl_config, memory=memory, runner=runner)

The reflection reaches attempt 2 through the chat model (system prompt by default), so the
graph needs no hook for it. The final answer (the last AI message, or `answer_fn(state)`)
goes to `reward_fn`. An attempt that loops past its step limit, raises, or times out ends
with reward 0 and says why in its feedback; only a failing policy stops the run.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.errors import GraphRecursionError
from pydantic import ConfigDict

from erl.agents.messages import ParsedReply, message_text
from erl.agents.recorder import AttemptRecorder, agent_error, close_attempt
from erl.core.config import check_placement
from erl.core.interfaces import Generation, Policy, SamplingParams
from erl.core.types import Trajectory


class PolicyChatModel(BaseChatModel):
    """A LangChain chat model whose every call is one recorded model call of an attempt.

    `bind_tools` keeps the OpenAI tool schemas, which are rendered through the tokenizer's
    chat template with the chat; tool calls are parsed from the model's text
    (erl.agents.recorder.parse_tool_calls). Sampling settings belong to the trainer:
    `tool_choice`, `stop` and temperatures passed by the graph are ignored.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    recorder: Any
    model_name: str = "erl-policy"

    @property
    def _llm_type(self) -> str:
        return "erl-policy"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: Any = None, tools: list[dict] | None = None, **kwargs: Any) -> ChatResult:
        reply, gen = await self.recorder.complete(convert_to_openai_messages(messages), tools,
                                                  kwargs.get("max_tokens"))
        return self._result(reply, gen)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, tools: list[dict] | None = None, **kwargs: Any) -> ChatResult:
        # LangGraph runs synchronous nodes in worker threads: the call goes back to the loop.
        reply, gen = self.recorder.complete_threadsafe(convert_to_openai_messages(messages), tools,
                                                       kwargs.get("max_tokens"))
        return self._result(reply, gen)

    def _result(self, reply: ParsedReply, gen: Generation) -> ChatResult:
        n_prompt = len(self.recorder.traj.steps[-1].prompt_ids)
        message = AIMessage(
            content=reply.content,
            tool_calls=[{"name": c["name"], "args": c["arguments"], "id": c["id"], "type": "tool_call"}
                        for c in reply.tool_calls],
            response_metadata={"finish_reason": "tool_calls" if reply.tool_calls else gen.finish_reason,
                               "model_name": self.model_name},
            usage_metadata={"input_tokens": n_prompt, "output_tokens": len(gen.token_ids),
                            "total_tokens": n_prompt + len(gen.token_ids)})
        return ChatResult(generations=[ChatGeneration(message=message)])


def task_messages(task: dict, system_prompt: str | Callable[[dict], str] | None = None) -> list[dict]:
    """The chat an attempt starts from: the task's own `messages`, or its question."""
    if task.get("messages"):
        return [dict(m) for m in task["messages"]]
    question = next((task[k] for k in ("question", "prompt", "input") if task.get(k)), None)
    if question is None:
        raise ValueError(f"task {task.get('task_id', '?')!r} has no 'messages', 'question', 'prompt' or 'input' "
                         "to start the agent from; pass input_fn to LangGraphAttemptRunner")
    system = system_prompt(task) if callable(system_prompt) else system_prompt
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": str(question)}]


def final_answer(state: Any) -> str:
    """The text of the last AI message of a messages-state graph's final state."""
    messages = state.get("messages", []) if isinstance(state, dict) else getattr(state, "messages", [])
    for message in reversed(list(messages or [])):
        if isinstance(message, AIMessage):
            return message_text(message.content).strip()
    return ""


def _accepts_task(factory: Callable) -> bool:
    """graph_factory(model, task) when it has two required positional parameters."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]
    return len(required) >= 2


class LangGraphAttemptRunner:
    """AttemptRunner for a LangGraph graph built around a chat model.

    graph_factory(model) or graph_factory(model, task) -> compiled graph (a fresh one per
        attempt: compiling is cheap and the graph's model is this attempt's recorder).
    reward_fn(task, answer) -> reward, (reward, feedback) or {"reward", "feedback"}.
    input_fn(task) -> graph input; default {"messages": task_messages(task, system_prompt)}.
    answer_fn(final_state) -> str; default the last AI message's text.
    placement: where the reflection goes: "append_system" / "replace_system" (default: the
        ErlConfig's reflection_placement), "first_user", or a callable(messages, guidance).
    max_model_calls (default ErlConfig.max_turns) and recursion_limit (LangGraph supersteps,
        default 2 * max_model_calls + 1) bound an attempt; timeout_s bounds its wall time;
        max_context_tokens bounds its chat (None: the workflow's, i.e. the trainer's
        max_context_tokens, else recorder.DEFAULT_MAX_CONTEXT_TOKENS).
    """

    def __init__(self, graph_factory: Callable, reward_fn: Callable[[dict, str], Any], *,
                 input_fn: Callable[[dict], Any] | None = None, answer_fn: Callable[[Any], str] | None = None,
                 system_prompt: str | Callable[[dict], str] | None = None, placement: Any = None,
                 max_model_calls: int | None = None, recursion_limit: int | None = None,
                 success_threshold: float = 1.0, timeout_s: float | None = None,
                 max_context_tokens: int | None = None, model_name: str = "erl-policy"):
        self.graph_factory, self.reward_fn = graph_factory, reward_fn
        self.input_fn = input_fn or (lambda task: {"messages": task_messages(task, system_prompt)})
        self.answer_fn = answer_fn or final_answer
        self.placement = check_placement(placement)
        self.max_model_calls, self.recursion_limit = max_model_calls, recursion_limit
        self.success_threshold, self.timeout_s = success_threshold, timeout_s
        self.max_context_tokens, self.model_name = max_context_tokens, model_name
        self._with_task = _accepts_task(graph_factory)

    async def __call__(self, task: dict, *, name: str, guidance: str | None, policy: Policy,
                       chat: Any, params: SamplingParams, config: Any) -> Trajectory:
        max_calls = self.max_model_calls or config.max_turns
        recorder = AttemptRecorder(policy, chat, params, name=name, task=task, guidance=guidance,
                                   placement=self.placement or config.reflection_placement,
                                   max_calls=max_calls, max_context_tokens=self.max_context_tokens)
        model = PolicyChatModel(recorder=recorder, model_name=self.model_name)
        graph = self.graph_factory(model, task) if self._with_task else self.graph_factory(model)
        inputs = self.input_fn(task)
        limit = self.recursion_limit or 2 * max_calls + 1
        state, error = None, None
        try:
            run = graph.ainvoke(inputs, config={"recursion_limit": limit})
            state = await asyncio.wait_for(run, self.timeout_s) if self.timeout_s else await run
        except GraphRecursionError:
            error = f"the agent did not finish within its step limit ({limit} graph steps)"
        except Exception as e:  # the agent's own failure (a tool that raises, ...): a bad attempt
            if recorder.fatal is not None:
                raise recorder.fatal from None
            error = agent_error(e, self.timeout_s)
        answer = self.answer_fn(state) if error is None else ""  # the user's code: its bugs surface
        fallback = inputs.get("messages") if isinstance(inputs, dict) else None
        return close_attempt(recorder, self.reward_fn, task, answer, error, self.success_threshold,
                             fallback_messages=_plain(fallback))


def _plain(messages: Any) -> list[dict] | None:
    """Graph input messages (dicts or LangChain messages) as OpenAI dicts, for an attempt
    whose agent never called the model."""
    if not messages:
        return None
    try:
        return convert_to_openai_messages(list(messages))
    except Exception:  # odd input: the attempt is still scored, only its prompt text is lost
        return None
