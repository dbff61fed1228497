"""Policy adapters: ErlWorkflow's `async generate(prompt_ids, SamplingParams) -> Generation`
over verl's rollout backends.

* `WorkerGroupPolicy` (rollout name "hf"): every episode's request parks in a queue; when
  all runnable episodes are waiting, the queue goes out as one batch, split evenly over the
  actor workers (`erl_generate`, data-parallel: each GPU generates its share with its HF copy).
* `ServerPolicy` (rollout names "vllm", "sglang"): each request goes to verl's async
  rollout servers through its LLMServerClient (load balancing, sticky sessions), as verl's
  own agent loop does; the servers batch internally.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from erl.rollout.chat import ChatTokenizer
from erl.workflow.base import Generation, SamplingParams


def _objects(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        arr[i] = x
    return arr


class _Stats:
    def __init__(self) -> None:
        self.stats = {"generated_tokens": 0, "generate_seconds": 0.0, "batches": 0, "sequences": 0}

    def reset_stats(self) -> dict:
        old, self.stats = self.stats, {k: type(v)(0) for k, v in self.stats.items()}
        return old


class WorkerGroupPolicy(_Stats):
    """Batches concurrent requests and runs them data-parallel on the actor workers.

    `generate_fn(DataProto) -> DataProto` is `actor_rollout_wg.erl_generate` (or a stand-in
    in tests); `dp_size` is the number of workers the batch is split over.
    """

    def __init__(self, tokenizer: Any, generate_fn: Callable[[Any], Any], dp_size: int = 1,
                 settle_s: float = 0.005):
        super().__init__()
        # After the queue stops growing, wait this long once more: episodes whose last await
        # was real I/O (the Ray memory actor) then join the same batch. Batches (and so the
        # sampling seeds) no longer depend on how fast the actor answered, which is what
        # lets a resumed run sample what the original run sampled.
        self.settle_s = float(settle_s)
        self.tokenizer = tokenizer
        self.generate_fn = generate_fn
        self.dp_size = max(int(dp_size), 1)
        self.stop_ids = ChatTokenizer(tokenizer).stop_ids
        self._queue: list[tuple[list[int], SamplingParams, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.seed: int | None = None  # set per step by the trainer: resumed runs sample alike

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((list(prompt_ids), params, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            size = -1
            while size != len(self._queue):  # let every runnable episode reach its request
                size = len(self._queue)
                for _ in range(2):
                    await asyncio.sleep(0)
                if size == len(self._queue) and self.settle_s > 0:
                    await asyncio.sleep(self.settle_s)
            params = self._queue[0][1]
            batch = [r for r in self._queue if r[1] == params]
            self._queue = [r for r in self._queue if not any(r is b for b in batch)]
            try:
                results = await asyncio.to_thread(self.generate_batch, [r[0] for r in batch], params)
            except Exception as exc:  # noqa: BLE001 - every waiting episode sees the worker's error
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, _, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        from verl import DataProto

        start = time.perf_counter()
        n = len(prompts)
        # Equal shares per worker: pad with copies of the first prompt, drop their answers.
        padded = prompts + [prompts[0]] * ((-n) % self.dp_size)
        meta = {"temperature": float(params.temperature), "top_p": float(params.top_p),
                "max_new_tokens": int(params.max_new_tokens)}
        if self.seed is not None:
            meta["seed"] = int(self.seed) * 1000 + self.stats["batches"]
        data = DataProto.from_dict(non_tensors={"prompt_ids": _objects(padded)}, meta_info=meta)
        out = self.generate_fn(data)
        nt = out.non_tensor_batch
        gens = []
        for i in range(n):
            ids = [int(t) for t in nt["token_ids"][i]]
            gens.append(Generation(token_ids=ids, logprobs=[float(x) for x in nt["logprobs"][i]],
                                   text=self.tokenizer.decode(ids, skip_special_tokens=True),
                                   finish_reason=str(nt["finish_reason"][i])))
        self.stats["generated_tokens"] += sum(len(g.token_ids) for g in gens)
        self.stats["generate_seconds"] += time.perf_counter() - start
        self.stats["batches"] += 1
        self.stats["sequences"] += n
        return gens


class ServerPolicy(_Stats):
    """One request per call to verl's rollout servers (vLLM / SGLang) via LLMServerClient."""

    def __init__(self, tokenizer: Any, client: Any):
        super().__init__()
        self.tokenizer = tokenizer
        self.client = client
        self.stop_ids = ChatTokenizer(tokenizer).stop_ids

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        start = time.perf_counter()
        greedy = params.temperature <= 0
        sampling = {"temperature": 0.0 if greedy else float(params.temperature),
                    "top_p": 1.0 if greedy else float(params.top_p), "top_k": -1,
                    "max_tokens": int(params.max_new_tokens), "logprobs": True,
                    "stop_token_ids": list(self.stop_ids)}
        out = await self.client.generate(uuid.uuid4().hex, prompt_ids=list(prompt_ids), sampling_params=sampling)
        ids = list(out.token_ids)[: params.max_new_tokens]
        logprobs = list(out.log_probs or [0.0] * len(ids))[: len(ids)]
        finish = "stop" if ids and ids[-1] in set(self.stop_ids) else "length"
        self.stats["generated_tokens"] += len(ids)
        self.stats["generate_seconds"] += time.perf_counter() - start
        self.stats["sequences"] += 1
        return Generation(token_ids=ids, logprobs=logprobs,
                          text=self.tokenizer.decode(ids, skip_special_tokens=True), finish_reason=finish)
