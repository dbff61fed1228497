"""Policy adapters: ErlWorkflow's `async generate(prompt_ids, SamplingParams) -> Generation`
over verl's rollout backends.

* `WorkerGroupPolicy` (rollout name "hf"): erl.rollout.batching.BatchingPolicy queues the
  episodes' requests; each batch is split evenly over the actor workers (`erl_generate`,
  data-parallel: each GPU generates its share with its HF copy).
* `ServerPolicy` (rollout names "vllm", "sglang"): each request goes to verl's async
  rollout servers through its LLMServerClient (load balancing, sticky sessions), as verl's
  own agent loop does; the servers batch internally.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from erl.core.interfaces import Generation, SamplingParams
from erl.models.chat import ChatTokenizer
from erl.rollout.batching import BatchingPolicy
from erl.trainers.verl.dataproto import object_array


class _Stats:
    def __init__(self) -> None:
        self.stats = {"generated_tokens": 0, "generate_seconds": 0.0, "batches": 0, "sequences": 0}

    def reset_stats(self) -> dict:
        old, self.stats = self.stats, {k: type(v)(0) for k, v in self.stats.items()}
        return old


class WorkerGroupPolicy(BatchingPolicy):
    """Batches concurrent requests (erl.rollout.batching) and runs each batch data-parallel
    on the actor workers.

    `generate_fn(DataProto) -> DataProto` is `actor_rollout_wg.erl_generate` (or a stand-in
    in tests); `dp_size` is the number of workers the batch is split over. The blocking
    remote call runs in a thread (offload), so the event loop stays free meanwhile.
    """

    def __init__(self, tokenizer: Any, generate_fn: Callable[[Any], Any], dp_size: int = 1):
        super().__init__(tokenizer, max_batch_size=None, offload=True)
        self.generate_fn = generate_fn
        self.dp_size = max(int(dp_size), 1)
        self.stop_ids = ChatTokenizer(tokenizer).stop_ids
        self.seed = None  # set per step by the trainer: resumed runs sample alike
        self._fresh = False

    def reset(self) -> None:
        """The next batch starts a phase (the driver's `run_phase`): each worker's rollout engine
        resets before it (RolloutEngine.reset), as the local trainer's does. Otherwise a slot's
        choice, and with it a request's row and random draws, follows the process's earlier steps,
        and a step resumed from a checkpoint samples other tokens than the run that saved it did."""
        self._fresh = True

    @property
    def seed(self) -> int | None:
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        # the n-th batch after a new seed samples under (seed, n), however many batches ran before
        self._seed, self._seeded_batches = value, 0

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        from verl import DataProto

        start = time.perf_counter()
        n = len(prompts)
        # Equal shares per worker: pad with copies of the first prompt, drop their answers.
        padded = prompts + [prompts[0]] * ((-n) % self.dp_size)
        meta = {"temperature": float(params.temperature), "top_p": float(params.top_p),
                "max_new_tokens": int(params.max_new_tokens)}
        if self._seed is not None:
            meta["seed"] = int(self._seed) * 1000 + self._seeded_batches
            self._seeded_batches += 1
        if self._fresh:
            meta["reset"], self._fresh = True, False
        data = DataProto.from_dict(non_tensors={"prompt_ids": object_array(padded)}, meta_info=meta)
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
