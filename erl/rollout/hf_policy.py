"""Hugging Face `generate` behind the async Policy interface, batched by BatchingPolicy:
left-padded batches, a KV cache, token ids and their log-probs under the sampler."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from transformers import GenerationConfig

from erl.core.interfaces import Generation, SamplingParams
from erl.models.chat import ChatTokenizer
from erl.rollout.batching import BatchingPolicy

logger = logging.getLogger(__name__)


class HFPolicy(BatchingPolicy):
    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 64):
        super().__init__(tokenizer, max_batch_size=max_batch_size)
        self.model = model
        self.stop_ids = ChatTokenizer(tokenizer).stop_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.stats["prefill_tokens"] = 0  # padded prompt tokens: every call prefills its whole prompts

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Sample one completion per prompt; log-probs are under logits / temperature.

        Out of GPU memory, the batch is generated in halves instead (logged), and later
        batches start at the size that fitted: a GPU shared with other runs, or a reflection
        wave of long prompts, then slows the step down rather than ending the run. A single
        prompt that does not fit is an error that says so."""
        try:
            return self._generate(prompts, params)
        except torch.OutOfMemoryError as exc:
            if len(prompts) == 1:
                raise torch.OutOfMemoryError(
                    f"HFPolicy: one prompt of {len(prompts[0])} tokens with max_new_tokens={params.max_new_tokens} "
                    f"does not fit in GPU memory even alone ({exc})") from exc
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = (len(prompts) + 1) // 2
        logger.warning("HFPolicy: out of GPU memory generating %d sequences; retrying in batches of %d "
                       "(and later batches at most %d)", len(prompts), half, half)
        self.max_batch_size = min(self.max_batch_size or half, half)
        return self.generate_batch(prompts[:half], params) + self.generate_batch(prompts[half:], params)

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        start = time.perf_counter()
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's next token is at the end
            input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            attention[i, width - len(p):] = 1
        sample = params.temperature > 0
        gen_cfg = GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=sample,
            temperature=params.temperature if sample else None, top_p=params.top_p if sample else None,
            top_k=0 if sample else None, eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
            return_dict_in_generate=True, output_logits=True)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                      generation_config=gen_cfg)
        finally:  # also when generate fails (out of memory): the trainer's update expects train mode
            if was_training:
                self.model.train()
        new = out.sequences[:, width:]
        # One step's logits at a time: stacking batch x steps x vocab floats (and their softmax)
        # held ~4x the logits at once, the peak that ran a 1,024-row reflection wave out of memory.
        scale = params.temperature if sample else 1.0
        logp = torch.stack([torch.log_softmax(step.float() / scale, dim=-1).gather(-1, new[:, j, None]).squeeze(-1)
                            for j, step in enumerate(out.logits)], dim=1).cpu()
        del out
        new = new.cpu()
        stops = set(self.stop_ids)
        results = []
        for i in range(len(prompts)):
            ids = new[i].tolist()
            n, finish = len(ids), "length"
            for j, t in enumerate(ids):
                if t in stops:
                    n, finish = j + 1, "stop"
                    break
            ids = ids[:n]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            results.append(Generation(token_ids=ids, logprobs=logp[i, :n].tolist(), text=text, finish_reason=finish))
            self.stats["generated_tokens"] += n
        self.stats["generate_seconds"] += time.perf_counter() - start
        self.stats["batches"] += 1
        self.stats["sequences"] += len(prompts)
        self.stats["prefill_tokens"] += width * len(prompts)
        return results
