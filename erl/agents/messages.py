"""OpenAI-format chat messages and tool calls: reading what agents send, parsing what the
model writes. Framework-free; erl.agents.recorder records the calls built from these."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from erl.core.tags import tag_blocks

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_OBSERVATION_CHARS = 2000  # what one step keeps of the tool results it led to
MAX_TOOL_CALLS = 64  # tool call blocks read from one reply; the rest stay in its text

# Hermes / Qwen style tool calls, the format of the ChatML templates this project uses.


@dataclass
class ParsedReply:
    """A model reply split into its text and its tool calls. `errors` names each block that
    looked like a tool call but could not be read (it stays in `content`)."""

    content: str
    tool_calls: list[dict] = field(default_factory=list)  # {"id", "name", "arguments": dict}
    errors: list[str] = field(default_factory=list)


def parse_tool_calls(text: str, id_prefix: str = "call") -> ParsedReply:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks -> tool calls, in linear time.

    Untrusted text: a block that is not a JSON object with a string `name` and an object
    (or JSON-object string) `arguments` is not a call; it stays in the content, so the
    agent treats the reply as an answer and the reward/feedback say what went wrong.
    """
    text = "" if text is None else str(text)
    calls, errors, kept, last = [], [], [], 0
    for i, match in enumerate(tag_blocks(text, "<tool_call>", "</tool_call>")):
        if i == MAX_TOOL_CALLS:  # a degenerate reply: reading every block costs more than it is worth
            errors.append(f"tool call blocks past the first {MAX_TOOL_CALLS} were not read")
            break
        call, error = _read_call(match.group(1))
        if call is None:
            errors.append(f"tool call {i + 1}: {error}")
            continue
        kept.append(text[last:match.start()])
        last = match.end()
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



def render_messages(messages: list[dict], limit: int = MAX_OBSERVATION_CHARS) -> str | None:
    """Tool results and user turns as the observation text of the step that led to them."""
    lines = []
    for m in messages:
        who = f"tool {m['name']}" if m["role"] == "tool" and m.get("name") else m["role"]
        lines.append(f"[{who}] {m['content']}")
    text = "\n".join(lines)
    return (text if len(text) <= limit else text[:limit] + " [...]") if lines else None
