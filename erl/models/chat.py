"""Chat rendering to token ids through the tokenizer's own chat template."""

from __future__ import annotations

from typing import Any


def chat_text(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = True,
              tools: list[dict] | None = None) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **kwargs)


def chat_ids(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = True,
             tools: list[dict] | None = None) -> list[int]:
    """Render then encode without extra special tokens: the template already wrote them.
    (Rendering to text first sidesteps the return-type differences of apply_chat_template
    across transformers versions.)"""
    text = chat_text(tokenizer, messages, add_generation_prompt, tools)
    return list(tokenizer.encode(text, add_special_tokens=False))
