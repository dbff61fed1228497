"""A scripted policy: deterministic text from a function of the prompt. For tests and demos.

It goes through the same token-in/token-out interface as a real model, so everything
downstream (token masks, re-assembly, distillation re-basing) is exercised for real.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from erl.core.interfaces import Generation, SamplingParams


class ScriptedPolicy:
    """`script(prompt_text, call_index) -> response_text`. Responses end with the chat's stop
    token, like a model that finished its turn; they are cut at `max_new_tokens` like a real
    sampler (finish_reason "length")."""

    def __init__(self, tokenizer: Any, script: Callable[[str, int], str], logprob: float = -0.5):
        self.tokenizer = tokenizer
        self.script = script
        self.logprob = logprob
        self.calls: list[str] = []  # every prompt the policy saw, decoded

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        prompt = self.tokenizer.decode(prompt_ids)
        # A real sampler can only emit valid text; lone surrogates become U+FFFD the same way.
        text = str(self.script(prompt, len(self.calls))).encode("utf-8", "replace").decode("utf-8")
        self.calls.append(prompt)
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        finish = "stop"
        if len(ids) > params.max_new_tokens:
            ids, finish = ids[: params.max_new_tokens], "length"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Generation(token_ids=ids, logprobs=[self.logprob] * len(ids), text=text, finish_reason=finish)
