"""Shared pieces of the agent-adapter tests: a scripted ReAct model and the chat it should see.

The scripted model searches once, then answers; it answers wrongly unless the reflection's
guidance is in its prompt, so ERL's attempt 1 -> reflection -> attempt 2 path runs.
"""

from __future__ import annotations

import json

from erl.core.reflection import GUIDANCE_HEADER

QUESTION = "In which city was the founder of Kell Dispensary born?"
GOLD = "Cadrevo"
QUERY = "founder of Kell Dispensary"
DOCS = {QUERY: "Kell Dispensary was started by Nadia Kell. Nadia was born in Cadrevo."}
GUIDANCE = "Search for the founder, then for where the founder was born."
SYSTEM = "You answer questions with the search tool."
TOOLS = [{"type": "function", "function": {
    "name": "search", "description": "Search the documents.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]


def search_docs(query: str) -> str:
    return DOCS.get(query, "No results.")


def tool_call_text(name: str, arguments: dict) -> str:
    """A tool call exactly as the tiny ChatML template renders an assistant's tool_calls."""
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


def react_script(prompt: str, call: int) -> str:
    if "You are a coach" in prompt:  # the reflection request
        return f"<prompt>{GUIDANCE}</prompt>"
    last_turn = prompt.rsplit("<|im_start|>", 2)[-2]
    if "<tool_response>" not in last_turn:
        return tool_call_text("search", {"query": QUERY})
    return GOLD if GUIDANCE_HEADER in prompt else "Miradel"


def exact_reward(task: dict, answer: str) -> tuple[float, str]:
    ok = answer.strip() == task["answer"]
    return float(ok), "Correct." if ok else "Wrong answer."


def expected_chat(tokenizer, answer: str, tools: list[dict], system: str = SYSTEM) -> str:
    """What the model must have seen and written, rendered independently by the template."""
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": QUERY}}}]},
        {"role": "tool", "content": DOCS[QUERY]},
        {"role": "assistant", "content": answer},
    ]
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
