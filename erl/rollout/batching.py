"""Turn one-request-at-a-time episode code into batched generation.

Episodes run as coroutines; each `generate` call parks its request in a queue. The drain
task lets every runnable episode reach its next request, then hands the whole queue (one
sampling setting at a time) to `generate_batch`. This is what makes ErlWorkflow, written
one episode at a time, run at batch speed: the idea of an async vLLM server, in-process.
Subclasses implement `generate_batch`: HF `generate` here, verl's workers in the verl trainer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from erl.core.interfaces import Generation, SamplingParams


async def settle(waiting: Callable[[], int]) -> None:
    """Yield until the runnable episodes have reached their requests: until `waiting()` (the
    queue's length) stops growing over three turns of the event loop, the turns an episode
    takes when it awaits a batched encoding (erl.models.chat.ChatTokenizer.warm: it registers,
    the batch is encoded, it resumes). Deterministic: the loop runs its callbacks in order."""
    size = -1
    while size != waiting():
        size = waiting()
        for _ in range(3):
            await asyncio.sleep(0)


class BatchingPolicy:
    """`offload=True` runs `generate_batch` in a worker thread (for blocking remote calls), so
    episodes waiting on tools or environments keep running; in-process torch code keeps it
    False, because autocast and RNG state are per thread."""

    def __init__(self, tokenizer: Any, max_batch_size: int | None = None, offload: bool = False):
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.offload = offload
        self._queue: list[tuple[list[int], SamplingParams, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.stats = {"generated_tokens": 0, "generate_seconds": 0.0, "batches": 0, "sequences": 0}

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        raise NotImplementedError

    def reset_stats(self) -> dict:
        old, self.stats = self.stats, {k: type(v)(0) for k, v in self.stats.items()}
        return old

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((list(prompt_ids), params, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            await settle(lambda: len(self._queue))
            params = self._queue[0][1]
            batch = [r for r in self._queue if r[1] == params][: self.max_batch_size]
            taken = {id(r) for r in batch}  # by identity, in one pass: a step queues ~1,000 requests
            self._queue = [r for r in self._queue if id(r) not in taken]
            prompts = [r[0] for r in batch]
            try:
                if self.offload:
                    results = await asyncio.to_thread(self.generate_batch, prompts, params)
                else:
                    results = self.generate_batch(prompts, params)
            except Exception as exc:  # every waiting episode sees the failure
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, _, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)
