"""Prompt ids for every model call of one attempt, whatever the agent does with its chat.

The agent decides what each call shows the model: it may only append (a ReAct loop), keep
a window (system prompt + latest observation), rewrite its system prompt, or summarise
its history. Every call's prompt is rendered from exactly the chat the agent sent.

When that chat is the previous call's chat + the model's reply + new non-assistant
messages (and the same tools), the prompt is the previous prompt + the generated ids +
the template's glue + the new messages rendered: what the model generated is never
re-tokenised, and the calls form one training sequence. Any other chat is rendered from
scratch; erl.core.samples.trajectory_to_sequences starts a new training sequence there,
so the loss never sees a context the model did not see, and masks stay on generated ids.

One implementation for both the env-agent runner (erl.workflow.attempt) and the
chat-completions recorder (erl.agents.recorder).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from erl.core.types import Step
from erl.models.chat import ChatTokenizer


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _call_key(call: Any) -> tuple:
    fn = call.get("function", call) if isinstance(call, dict) else {}
    args = fn.get("arguments", {}) if isinstance(fn, dict) else {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass
    name = fn.get("name") if isinstance(fn, dict) else None
    return name, json.dumps(args, sort_keys=True, default=str)


_IMMUTABLE = (str, int, float, bool, type(None))


def snapshot(messages: list[dict]) -> list[dict]:
    """A copy that later in-place edits of the agent's chat cannot reach: each message dict is
    copied and only its mutable values (content parts, tool calls) deep-copied. A deepcopy of
    every chat cost ~0.5 s of an ERL collect's host time on the GPU (docs/gpu/rollout_waves)."""
    return [{k: v if isinstance(v, _IMMUTABLE) else copy.deepcopy(v) for k, v in m.items()}
            if isinstance(m, dict) else copy.deepcopy(m) for m in messages]


def message_key(message: dict) -> tuple:
    """What a message means to the model: role, text without edge whitespace, tool calls
    (names and arguments; call ids and argument encoding do not matter)."""
    calls = tuple(_call_key(c) for c in message.get("tool_calls") or [])
    return message.get("role"), _text(message.get("content")).strip(), calls


class TurnPrompts:
    """The prompt ids of successive model calls of one attempt.

    Call `prompt_ids(messages, tools)` before each model call and `replied(step, reply)`
    after it, where `step` holds that call's prompt and generated ids and `reply` is the
    assistant message the agent is expected to keep for it.
    """

    def __init__(self, chat: ChatTokenizer):
        self.chat = chat
        self._sent: tuple[list[dict], list | None] | None = None  # the chat of the call in flight
        self._last: tuple[list[dict], list | None, Step, tuple] | None = None  # the last answered call
        self.plain_ids: list[int] | None = None  # the last call's ids without the reflection, if it began a sequence

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None,
                   plain: list[dict] | None = None) -> list[int]:
        """`plain`: the same chat without the reflection, if it has one. Where the call starts
        a new sequence, its ids become `plain_ids` (what consolidation re-bases onto)."""
        return self._ids(plain, *self._sending(messages, tools))

    async def prompt_ids_async(self, messages: list[dict], tools: list[dict] | None = None,
                               plain: list[dict] | None = None) -> list[int]:
        """prompt_ids, with whatever it must encode encoded in a batch with other episodes'
        (ChatTokenizer.warm)."""
        messages, tools, new = self._sending(messages, tools)
        if new is None:
            chats = [(messages, True, tools)] + ([(plain, True, tools)] if plain is not None else [])
        else:
            chats = [(self.chat.continuation_chat(new), True, tools)]
        await self.chat.warm(chats)
        return self._ids(plain, messages, tools, new)

    def _sending(self, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list | None, list | None]:
        """The call's chat as sent (a snapshot: agents mutate their chat lists and messages in
        place between calls) and its new messages if it extends the last call (new_messages)."""
        messages, tools = snapshot(messages), copy.deepcopy(tools) or None
        self._sent = (messages, tools)
        self.plain_ids = None
        return messages, tools, self.new_messages(messages, tools)

    def _ids(self, plain: list[dict] | None, messages: list[dict], tools: list | None, new: list | None) -> list[int]:
        if new is None:
            ids = self.chat.prompt_ids(messages, tools)
            if plain is not None:
                self.plain_ids = self.chat.prompt_ids(plain, tools)
            return ids
        prev = self._last[2]
        prev.suffix_ids = self.chat.glue_ids(prev.response_ids)
        return prev.prompt_ids + prev.response_ids + prev.suffix_ids + self.chat.continuation_ids(new, tools)

    def replied(self, step: Step, reply: dict) -> None:
        if self._sent is None:
            raise RuntimeError("replied() without a prompt_ids() call before it")
        self._last = (*self._sent, step, message_key(reply))
        self._sent = None

    def new_messages(self, messages: list[dict], tools: list[dict] | None) -> list[dict] | None:
        """The messages after the model's reply if `messages` extends the last call, else None."""
        if self._last is None:
            return None
        prev_msgs, prev_tools, _, reply = self._last
        n = len(prev_msgs)
        if (len(messages) <= n or messages[:n] != prev_msgs or message_key(messages[n]) != reply
                or (tools or None) != prev_tools):
            return None
        new = messages[n + 1:]
        return None if any(m.get("role") == "assistant" for m in new) else new
