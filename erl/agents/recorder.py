"""Record an existing agent's chat-completion calls as one ERL attempt, token-exactly.

Agents written for LangChain/LangGraph or for the `openai` client send the whole chat on
every call. The recorder turns those calls into Steps the trainer can use. Each call's
prompt is the chat the agent sent (with the reflection placed into it), tokenised by
erl.rollout.turns: a chat that only grew extends the previous call's ids and training
sequence; a window, a rewritten or summarised history is rendered afresh and starts a
new training sequence.

Both the LangChain chat model (erl.agents.langgraph) and the HTTP endpoint
(erl.agents.openai_server) feed it OpenAI-format messages (erl.agents.messages).
Framework-free on purpose.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from erl.agents.messages import ParsedReply, assistant_message, normalize_messages, parse_tool_calls, render_messages
from erl.core.gating import is_reward
from erl.core.interfaces import Generation, Policy, SamplingParams
from erl.core.reflection import place_guidance
from erl.core.types import Step, Trajectory
from erl.models.chat import ChatTokenizer
from erl.rollout.turns import TurnPrompts

__all__ = ["AttemptRecorder", "ContextLimitExceeded", "ParsedReply", "StepLimitExceeded", "close_attempt",
           "parse_tool_calls"]

# An attempt's context when neither the runner nor the workflow sets one: never unbounded.
DEFAULT_MAX_CONTEXT_TOKENS = 32768
_TOKEN_CHARS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def max_token_chars(tokenizer: Any) -> int:
    """The most characters one token of `tokenizer` stands for (its longest vocabulary
    entry; a byte-level entry is one character per byte, never fewer than it decodes to).
    A chat of C characters is at least C / this many tokens: a bound found without tokenising."""
    try:
        return _TOKEN_CHARS[tokenizer]
    except (KeyError, TypeError):
        pass
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
    try:
        _TOKEN_CHARS[tokenizer] = longest
    except TypeError:  # not weak-referenceable: computed again next time
        pass
    return longest


class StepLimitExceeded(RuntimeError):
    """The agent asked for more model calls than one attempt allows."""


class ContextLimitExceeded(RuntimeError):
    """The chat no longer fits the context the trainer allows."""


class AttemptRecorder:
    """Collects the model calls of one attempt into a Trajectory.

    One recorder per attempt. `complete` is called from the event loop the attempt runs on
    (`loop`); other threads hand their calls to it with `complete_threadsafe`.
    """

    def __init__(self, policy: Policy, chat: ChatTokenizer, params: SamplingParams, *, name: str, task: dict,
                 guidance: str | None = None, placement: str | Callable = "append_system",
                 max_calls: int = 8, max_context_tokens: int | None = None):
        self.policy, self.chat, self.params = policy, chat, params
        self.guidance, self.placement = guidance, placement
        self.max_calls, self.max_context_tokens = max_calls, max_context_tokens or DEFAULT_MAX_CONTEXT_TOKENS
        self.traj = Trajectory(name=name, task=task, info={"truncated": False})
        self.fatal: BaseException | None = None  # a policy failure: never hidden as a bad attempt
        self.stopped: str | None = None  # why the attempt was cut off (a limit), if it was
        self.loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self.turns = TurnPrompts(chat)
        self._prev_msgs: list[dict] = []  # the chat of the last call, as the agent sent it

    async def complete(self, messages: Any, tools: list[dict] | None = None,
                       max_new_tokens: int | None = None) -> tuple[ParsedReply, Generation]:
        async with self._lock:
            return await self._complete(normalize_messages(messages), tools or None, max_new_tokens)

    def complete_threadsafe(self, messages: Any, tools: list[dict] | None = None,
                            max_new_tokens: int | None = None) -> tuple[ParsedReply, Generation]:
        """For agents that call the model synchronously from a worker thread."""
        if _in_loop_thread(self.loop):
            raise RuntimeError("a synchronous model call on the attempt's own event loop would block it; "
                               "use the async API (ainvoke / AsyncOpenAI) inside async code")
        return asyncio.run_coroutine_threadsafe(self.complete(messages, tools, max_new_tokens), self.loop).result()

    async def _complete(self, msgs: list[dict], tools: list | None, max_new_tokens: int | None):
        steps = self.traj.steps
        if len(steps) >= self.max_calls:
            self.stopped = f"the agent made more than {self.max_calls} model calls"
            raise StepLimitExceeded(self.stopped)
        guided = place_guidance(msgs, self.guidance, self.placement)
        if steps:  # what the agent added since its last call is what that call led to
            new = self.turns.new_messages(guided, tools)
            if new is None:  # a rewritten chat: its latest messages that the last call did not have
                tail = msgs[max((i + 1 for i, m in enumerate(msgs) if m["role"] == "assistant"), default=0):]
                new = [m for m in tail if m not in self._prev_msgs]
            steps[-1].observation = render_messages(new)
        self._prev_msgs = msgs
        chars = sum(len(m["content"]) for m in guided)
        if chars > self.max_context_tokens * max_token_chars(self.chat.tokenizer):
            # Refused before tokenising: a 10 MB chat would cost seconds to find too long.
            self.traj.info["truncated"] = True
            self.stopped = f"the chat holds {chars} characters, more than {self.max_context_tokens} tokens can hold"
            raise ContextLimitExceeded(self.stopped)
        ids = await self.turns.prompt_ids_async(guided, tools, plain=msgs if self.guidance else None)
        if not steps:
            self.traj.info.update(prompt_ids=list(ids), messages=guided, tools=tools,
                                  plain_prompt_ids=list(self.turns.plain_ids) if self.guidance else list(ids))
        if len(ids) >= self.max_context_tokens:
            self.traj.info["truncated"] = True
            self.stopped = f"the chat reached {len(ids)} tokens (limit {self.max_context_tokens})"
            raise ContextLimitExceeded(self.stopped)
        params = self.params
        if max_new_tokens is not None and max_new_tokens < params.max_new_tokens:
            params = SamplingParams(max_new_tokens, params.temperature, params.top_p, dict(params.extra))
        try:
            gen = await self.policy.generate(list(ids), params)
        except asyncio.CancelledError:  # the attempt timed out while waiting: not a policy failure
            raise
        except Exception as e:
            self.fatal = e
            raise
        reply = parse_tool_calls(gen.text, id_prefix=f"call_{len(steps)}")
        step = Step(prompt_ids=list(ids), response_ids=list(gen.token_ids), logprobs=list(gen.logprobs),
                    messages=guided, response=gen.text, action=reply.tool_calls or reply.content,
                    info={"tool_calls": reply.tool_calls, "tool_call_errors": reply.errors,
                          "finish_reason": gen.finish_reason})
        if self.turns.plain_ids is not None:
            step.info["plain_prompt_ids"] = self.turns.plain_ids
        steps.append(step)
        self.turns.replied(step, assistant_message(reply))
        return reply, gen

    def finish(self, reward: float, feedback: str, *, answer: str = "", success: bool = False,
               error: str | None = None, fallback_messages: list[dict] | None = None) -> Trajectory:
        """Close the attempt: the outcome lands on the last step (what the reflection reads)."""
        traj = self.traj
        if "prompt_ids" not in traj.info:  # the agent never called the model
            try:
                msgs = normalize_messages(fallback_messages)
            except ValueError:  # no or odd input messages: the attempt still gets a (bare) prompt
                msgs = [{"role": "user", "content": ""}]
            guided = place_guidance(msgs, self.guidance, self.placement)
            traj.info.update(prompt_ids=self.chat.prompt_ids(guided), messages=guided, tools=None,
                             plain_prompt_ids=self.chat.prompt_ids(msgs))
        if traj.steps:
            last = traj.steps[-1]
            last.observation = f"{last.observation}\n{feedback}" if last.observation else feedback
            last.reward, last.done = float(reward), True
        traj.reward = float(reward)
        traj.info.update(success=bool(success), answer=answer, feedback=feedback, error=error,
                         turns=len(traj.steps))
        return traj


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


RewardFn = Callable[[dict, str], Any]


AGENT_FAILED = "the agent failed with"
log = logging.getLogger(__name__)
_logged: set[tuple[str, str]] = set()  # the kinds of agent failure already in the log


def agent_error(exc: BaseException, timeout_s: float | None = None) -> str:
    """The feedback line for an attempt whose agent did not come back with an answer. An agent
    that raised (a bug in its code, a sync call inside an async graph) scores 0 like any failed
    attempt, so each kind of failure is also logged, once a process, and counted in the step's
    `attempt/agent_errors`: otherwise a broken agent trains on zeros in silence."""
    if isinstance(exc, (StepLimitExceeded, ContextLimitExceeded)):
        return str(exc)
    if isinstance(exc, TimeoutError) and timeout_s:
        return f"the agent did not finish within {timeout_s:g} s"
    text = f"{AGENT_FAILED} {type(exc).__name__}: {str(exc)[:200]}"
    kind = (type(exc).__name__, str(exc).split("\n")[0][:200])
    if kind not in _logged:
        _logged.add(kind)
        log.warning("%s; the attempt scores 0 (each kind of failure is logged once; attempt/agent_errors counts "
                    "them all)", text)
    return text


def score_answer(reward_fn: RewardFn, task: dict, answer: str) -> tuple[float, str]:
    """Call the task's reward function: it returns a number, (number, feedback) or a dict
    with "reward" (and "feedback"). An empty answer scores 0 without asking it."""
    if not answer or not answer.strip():
        return 0.0, "The agent gave no final answer. Reward: 0"
    result = reward_fn(task, answer)
    feedback = None
    if isinstance(result, dict):
        result, feedback = result.get("reward"), result.get("feedback")
    elif isinstance(result, tuple):
        result, feedback = result
    if not is_reward(result):
        raise TypeError(f"reward_fn must return a finite number, (number, feedback) or a dict, got {result!r}")
    return float(result), feedback or f"Reward: {float(result):g}"


def close_attempt(recorder: AttemptRecorder, reward_fn: RewardFn, task: dict, answer: str,
                  error: str | None, success_threshold: float,
                  fallback_messages: list[dict] | None = None) -> Trajectory:
    """Score the attempt (an agent that failed or ran past its limits earns 0) and finish it."""
    answer = answer or ""
    error = recorder.stopped or error  # an agent that caught the limit's error still ran past it
    if error is not None:
        reward, feedback = 0.0, f"The attempt ended early: {error}. Reward: 0"
    else:
        reward, feedback = score_answer(reward_fn, task, answer)
    errors = [e for s in recorder.traj.steps for e in s.info.get("tool_call_errors", [])]
    if errors:
        feedback += f"\nNote: {len(errors)} tool call(s) could not be read ({errors[0]})."
    traj = recorder.finish(reward, feedback, answer=answer, success=error is None and reward >= success_threshold,
                           error=error, fallback_messages=fallback_messages)
    traj.info["agent_exception"] = bool(error and error.startswith(AGENT_FAILED))  # attempt/agent_errors
    return traj
