"""Chats to token ids through the tokenizer's own chat template, token-exact across turns.

Re-rendering the whole chat at every turn can change earlier tokens (templates strip
thinking, re-format tool calls, drop schemas). So, like verl's agent loop, when a chat
only grew, a turn's prompt is the previous prompt + the generated ids + the template's
turn-closing glue (`glue_ids`) + the rendered new messages (`continuation_ids`). Which
turns may be extended is decided in one place, erl.rollout.turns.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from functools import cached_property
from typing import Any

# Rendered prompts kept per ChatTokenizer. A step renders the same chats again and again: the n
# samples of a task start from one prompt, and observations repeat across episodes. Rendering
# and encoding were ~60% of an ERL collect's host time outside the engine (cProfile, 64 x 8).
CACHE_SIZE = 8192


def chat_text(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = True,
              tools: list[dict] | None = None) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **kwargs)


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Ids of each text, without extra special tokens (a chat template already wrote them).
    A fast tokenizer's Rust backend encodes a batch on every core and without offsets, as
    `tokenizer.encode` would token for token; the backend is skipped while it holds truncation
    or padding settings left by an earlier call, which `tokenizer.encode` would clear first."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # tokenizers < 0.21: no fast
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def chat_ids(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = True,
             tools: list[dict] | None = None) -> list[int]:
    """Render then encode. (Rendering to text first sidesteps the return-type differences of
    apply_chat_template across transformers versions.)"""
    return encode_texts(tokenizer, [chat_text(tokenizer, messages, add_generation_prompt, tools)])[0]

# A throw-away conversation: the tokens a template puts after it are what new messages cost.
_BASE = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]


class ChatTokenizer:
    """Renders chats to ids with a Hugging Face tokenizer's chat template."""

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
                "ERL renders multi-turn chats and needs one"
            )
        self.tokenizer = tokenizer
        self._cache: OrderedDict[str, list[int]] = OrderedDict()  # least recently used first
        # Per event loop: texts that episodes await (`warm`), encoded together at the loop's next turn.
        self._pending: dict[asyncio.AbstractEventLoop, tuple[dict[str, str], list[asyncio.Future]]] = {}

    @staticmethod
    def _key(messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None) -> str:
        return json.dumps([messages, add_generation_prompt, tools or None], sort_keys=True, default=str)

    def _remember(self, key: str, ids: list[int]) -> None:
        self._cache[key] = ids
        self._cache.move_to_end(key)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def _ids(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None,
             key: str | None = None) -> list[int]:
        """chat_ids, remembered: the same chat (by its JSON, `key` when the caller has it) renders
        to the same ids. A copy is returned, so a caller that edits its list cannot change what is
        remembered."""
        key = key or self._key(messages, add_generation_prompt, tools)
        ids = self._cache.get(key)
        if ids is None:
            ids = chat_ids(self.tokenizer, messages, add_generation_prompt, tools)
        self._remember(key, ids)
        return list(ids)

    async def warm(self, chats: list[tuple[list[dict], bool, list[dict] | None]]) -> None:
        """Encode into the cache those of `chats` ((messages, add_generation_prompt, tools)) it
        lacks, in one batch with every chat that other episodes ask for in the same turn of the
        event loop: a step's reflections and second attempts are new chats of ~500 tokens each,
        and the Rust tokenizer encodes a batch on every core (one at a time, they were the
        largest host cost of an ERL collect on the GPU: docs/gpu/rollout_waves). The ids then
        come from the synchronous methods, which find them cached."""
        await self._warm({self._key(*chat): chat for chat in chats})

    async def _warm(self, keys: dict[str, tuple]) -> None:
        # A chat found cached waits for the batch all the same: whether it is cached depends on
        # the process's history (earlier steps, evals, other tasks with the same grid), and an
        # episode that went on at once would reach the rollout engine before the others, in
        # another admission, slot and row, with other random draws. A resumed run, its cache
        # empty, then sampled other tokens than the original (docs/gpu/ratio_rise).
        keys = {k: c for k, c in keys.items() if k not in self._cache}
        loop = asyncio.get_running_loop()
        if loop not in self._pending:
            self._pending[loop] = ({}, [])
            loop.call_soon(self._flush, loop)
        texts, waiters = self._pending[loop]
        for key, (messages, add_generation_prompt, tools) in keys.items():
            texts.setdefault(key, chat_text(self.tokenizer, messages, add_generation_prompt, tools))
        # a future per waiter: a cancelled episode cancels only its own; the others resume one
        # turn after the batch (erl.rollout.batching.settle counts on it)
        waiters.append(done := loop.create_future())
        await done

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        texts, waiters = self._pending.pop(loop)
        try:
            if texts:  # none when every chat of this turn was cached
                for key, ids in zip(texts, encode_texts(self.tokenizer, list(texts.values()))):
                    self._remember(key, ids)
        except Exception as exc:  # noqa: BLE001 -- every waiting episode sees the failure
            for done in waiters:
                if not done.done():
                    done.set_exception(exc)
        else:
            for done in waiters:
                if not done.done():
                    done.set_result(None)

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        return self._ids(messages, True, tools)

    async def prompt_ids_async(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """prompt_ids, encoded in a batch with other episodes' (`warm`)."""
        key = self._key(messages, True, tools)  # a chat's JSON, made once for both lookups
        await self._warm({key: (messages, True, tools)})
        return self._ids(messages, True, tools, key)

    def _base_ids(self, tools: list[dict] | None = None) -> list[int]:
        return self._ids(_BASE, False, tools)

    @cached_property
    def stop_ids(self) -> list[int]:
        """Token ids that end an assistant turn (the template's end-of-turn and eos)."""
        ids = {self.tokenizer.eos_token_id}
        for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            tid = self.tokenizer.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid >= 0:
                ids.add(tid)
        return sorted(i for i in ids if i is not None)

    @cached_property
    def turn_close_ids(self) -> list[int]:
        """What the template writes after an assistant message's text, from its stop token on."""
        base = self._base_ids()
        stops = set(self.stop_ids)
        for i in range(len(base) - 1, -1, -1):
            if base[i] in stops:
                return base[i:]
        return []

    def glue_ids(self, response_ids: list[int]) -> list[int]:
        """Template tokens that follow a generated turn: the rest of the turn-closing glue if
        the model stopped on its end token, all of it if it ran out of length."""
        close = self.turn_close_ids
        if response_ids and close and response_ids[-1] in set(self.stop_ids):
            return close[1:]
        return close

    @staticmethod
    def continuation_chat(new_messages: list[dict]) -> list[dict]:
        """The chat whose rendering continuation_ids cuts the new messages' ids from."""
        return _BASE + list(new_messages)

    def continuation_ids(self, new_messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Ids of new (non-assistant) messages after a closed assistant turn, plus the
        generation prompt for the next assistant turn. Rendered with the tool schemas, as
        some templates render tool turns differently when tools are given."""
        full = self._ids(self.continuation_chat(new_messages), True, tools)
        base = self._base_ids(tools)
        if full[: len(base)] != base:
            raise ValueError("chat template renders earlier turns differently when messages are appended")
        return full[len(base):]
