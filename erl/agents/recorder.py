"""Record an existing agent's chat-completion calls as one ERL attempt, token-exactly.

Agents written for LangChain/LangGraph or for the `openai` client send the whole chat on
every call. The recorder turns those calls into Steps the trainer can use: when a call's
chat is the previous call's chat + the reply we gave + new tool/user messages, its prompt
ids are the previous prompt + the generated ids + the template's glue + the new messages
rendered (as erl.rollout.chat does for env agents), so nothing is ever re-tokenised. A
call whose chat does not extend the last one (the agent rewrote its history) is rendered
afresh and becomes a new training sequence (erl.core.samples).

Both the LangChain chat model (erl.agents.langgraph) and the HTTP endpoint
(erl.agents.openai_server) feed it OpenAI-format messages. Framework-free on purpose.
"""

from __future__ import annotations

import asyncio
import json
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from erl.core.config import ConfigError
from erl.core.reflection import GUIDANCE_HEADER, apply_guidance
from erl.core.tags import tag_blocks
from erl.core.types import Step, Trajectory
from erl.models.chat import chat_ids
from erl.rollout.chat import ChatTokenizer
from erl.workflow.base import Generation, Policy, SamplingParams

ROLES = ("system", "developer", "user", "assistant", "tool")
# A throw-away closed conversation: what a template adds after it is what new messages cost.
_BASE = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
MAX_OBSERVATION_CHARS = 2000  # what one step keeps of the tool results it led to
MAX_TOOL_CALLS = 64  # tool call blocks read from one reply; the rest stay in its text
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


@dataclass
class ParsedReply:
    """A model reply split into its text and its tool calls. `errors` names each block that
    looked like a tool call but could not be read (it stays in `content`)."""

    content: str
    tool_calls: list[dict] = field(default_factory=list)  # {"id", "name", "arguments": dict}
    errors: list[str] = field(default_factory=list)


def parse_tool_calls(text: str, id_prefix: str = "call") -> ParsedReply:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Hermes / Qwen style,
    the format of the ChatML templates this project uses) -> tool calls, in linear time.

    Untrusted text: a block that is not a JSON object with a string `name` and an object
    (or JSON-object string) `arguments` is not a call; it stays in the content, so the
    agent treats the reply as an answer and the reward/feedback say what went wrong.
    """
    text = "" if text is None else str(text)
    calls, errors, kept, last = [], [], [], 0
    for i, block in enumerate(tag_blocks(text, "<tool_call>", "</tool_call>")):
        if i == MAX_TOOL_CALLS:  # a degenerate reply: reading every block costs more than it is worth
            errors.append(f"tool call blocks past the first {MAX_TOOL_CALLS} were not read")
            break
        call, error = _read_call(block.group(1))
        if call is None:
            errors.append(f"tool call {i + 1}: {error}")
            continue
        kept.append(text[last:block.start()])
        last = block.end()
        calls.append({"id": f"{id_prefix}_{len(calls)}", **call})
    kept.append(text[last:])
    return ParsedReply(content="".join(kept).strip() if calls else text.strip(), tool_calls=calls, errors=errors)


def _read_call(body: str) -> tuple[dict | None, str]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        return None, "not valid JSON"
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"].strip():
        return None, "needs a JSON object with a \"name\""
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (json.JSONDecodeError, RecursionError):
            return None, "\"arguments\" is not valid JSON"
    if not isinstance(args, dict):
        return None, "\"arguments\" must be a JSON object"
    return {"name": data["name"].strip(), "arguments": args}, ""


def message_text(content: Any) -> str:
    """OpenAI message content (a string, None, or a list of parts) as plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in content]
        return "\n".join(str(p) for p in parts if p)
    raise ValueError(f"message content must be a string, null or a list of parts, got {type(content).__name__}")


def _arguments(raw: Any) -> dict:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            raise ValueError("tool call arguments are not valid JSON") from None
        if isinstance(value, dict):
            return value
    raise ValueError("tool call arguments must be a JSON object")


def normalize_messages(messages: Any) -> list[dict]:
    """OpenAI-format messages -> canonical dicts: string content, tool-call arguments as
    objects (what Hugging Face chat templates expect). Raises ValueError on a malformed chat."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {ROLES}, got {role!r}")
        try:
            msg: dict = {"role": "system" if role == "developer" else role, "content": message_text(m.get("content"))}
            calls = m.get("tool_calls") or []
            if role == "assistant" and calls:
                msg["tool_calls"] = [_canonical_call(c) for c in calls]
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"messages[{i}]: {e}") from None
        for key in ("tool_call_id", "name"):
            if role == "tool" and isinstance(m.get(key), str):
                msg[key] = m[key]
        out.append(msg)
    return out


def _canonical_call(call: Any) -> dict:
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError("a tool call needs function.name")
    return {"id": str(call.get("id") or ""), "type": "function",
            "function": {"name": fn["name"], "arguments": _arguments(fn.get("arguments", {}))}}


def assistant_message(reply: ParsedReply) -> dict:
    """The assistant message an agent gets back for a reply, in canonical form."""
    msg: dict = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        msg["tool_calls"] = [{"id": c["id"], "type": "function",
                              "function": {"name": c["name"], "arguments": c["arguments"]}}
                             for c in reply.tool_calls]
    return msg


def _same_message(a: dict, b: dict) -> bool:
    """Equal for the model's purposes: ids and whitespace at the ends do not matter."""
    def key(m: dict) -> tuple:
        calls = tuple((c["function"]["name"], json.dumps(c["function"]["arguments"], sort_keys=True))
                      for c in m.get("tool_calls", []))
        return m["role"], m["content"].strip(), calls
    return key(a) == key(b)


PLACEMENTS = ("append_system", "replace_system", "first_user")


def check_placement(placement: Any) -> Any:
    """None (the ErlConfig's reflection_placement), a name from PLACEMENTS, or a callable."""
    if placement is None or callable(placement) or placement in PLACEMENTS:
        return placement
    raise ConfigError(f"placement must be one of {PLACEMENTS} or a callable(messages, guidance), got {placement!r}")


def place_guidance(messages: list[dict], guidance: str | None, placement: str | Callable) -> list[dict]:
    """Put the reflection where the attempt's agent will read it: in the system prompt
    (erl.core.reflection.apply_guidance), at the top of the first user message
    ("first_user"), or wherever a callable `placement(messages, guidance)` puts it."""
    if not guidance:
        return [dict(m) for m in messages]
    if callable(placement):
        return [dict(m) for m in placement([dict(m) for m in messages], guidance)]
    if placement == "first_user":
        out = [dict(m) for m in messages]
        for m in out:
            if m["role"] == "user":
                m["content"] = f"{GUIDANCE_HEADER}\n{guidance}\n\n{m['content']}"
                return out
        return apply_guidance(out, guidance)
    return apply_guidance(messages, guidance, placement)


def render_messages(messages: list[dict], limit: int = MAX_OBSERVATION_CHARS) -> str | None:
    """Tool results and user turns as the observation text of the step that led to them."""
    lines = []
    for m in messages:
        who = f"tool {m['name']}" if m["role"] == "tool" and m.get("name") else m["role"]
        lines.append(f"[{who}] {m['content']}")
    text = "\n".join(lines)
    return (text if len(text) <= limit else text[:limit] + " [...]") if lines else None


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
        self._last: tuple[list[dict], list | None, dict] | None = None  # (chat, tools, our reply)

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
        chars = sum(len(m["content"]) for m in guided)
        if chars > self.max_context_tokens * max_token_chars(self.chat.tokenizer):
            # Refused before tokenising: a 10 MB chat would cost seconds to find too long.
            self.traj.info["truncated"] = True
            self.stopped = f"the chat holds {chars} characters, more than {self.max_context_tokens} tokens can hold"
            raise ContextLimitExceeded(self.stopped)
        ids = self._prompt_ids(msgs, guided, tools)
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
        steps.append(Step(prompt_ids=list(ids), response_ids=list(gen.token_ids), logprobs=list(gen.logprobs),
                          messages=guided, response=gen.text,
                          action=reply.tool_calls or reply.content,
                          info={"tool_calls": reply.tool_calls, "tool_call_errors": reply.errors,
                                "finish_reason": gen.finish_reason}))
        self._last = (msgs, tools, assistant_message(reply))
        return reply, gen

    def _prompt_ids(self, msgs: list[dict], guided: list[dict], tools: list | None) -> list[int]:
        if self._last is None:
            ids = self.chat.prompt_ids(guided, tools)
            self.traj.info.update(prompt_ids=list(ids), messages=guided, tools=tools,
                                  plain_prompt_ids=self.chat.prompt_ids(msgs, tools) if self.guidance else list(ids))
            return ids
        prev_msgs, prev_tools, ours = self._last
        prev = self.traj.steps[-1]
        n = len(prev_msgs)
        extends = (len(msgs) > n and msgs[:n] == prev_msgs and _same_message(msgs[n], ours)
                   and all(m["role"] != "assistant" for m in msgs[n + 1:]) and tools == prev_tools)
        if extends:
            new = msgs[n + 1:]
            prev.observation = render_messages(new)
            prev.suffix_ids = self.chat.glue_ids(prev.response_ids)
            return prev.prompt_ids + prev.response_ids + prev.suffix_ids + self._continuation(new, tools)
        tail = msgs[max((i + 1 for i, m in enumerate(msgs) if m["role"] == "assistant"), default=0):]
        prev.observation = render_messages(tail)
        return self.chat.prompt_ids(guided, tools)

    def _continuation(self, new: list[dict], tools: list | None) -> list[int]:
        """New messages after a closed assistant turn + the next generation prompt, rendered
        with the tool schemas (some templates render tool turns differently with tools)."""
        if not tools:
            return self.chat.continuation_ids(new)
        tok = self.chat.tokenizer
        base = chat_ids(tok, _BASE, add_generation_prompt=False, tools=tools)
        full = chat_ids(tok, _BASE + list(new), add_generation_prompt=True, tools=tools)
        if full[: len(base)] != base:
            raise ValueError("chat template renders earlier turns differently when messages are appended")
        return full[len(base):]

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


def agent_error(exc: BaseException, timeout_s: float | None = None) -> str:
    """The feedback line for an attempt whose agent did not come back with an answer."""
    if isinstance(exc, (StepLimitExceeded, ContextLimitExceeded)):
        return str(exc)
    if isinstance(exc, TimeoutError) and timeout_s:
        return f"the agent did not finish within {timeout_s:g} s"
    return f"the agent failed with {type(exc).__name__}: {str(exc)[:200]}"


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
    if isinstance(result, bool) or not isinstance(result, (int, float)) or not math.isfinite(result):
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
    return recorder.finish(reward, feedback, answer=answer, success=error is None and reward >= success_threshold,
                           error=error, fallback_messages=fallback_messages)
