"""Training rows -> padded tensors: the one layout both trainers train on.

    prompts:       |<- left padding ->| prompt tokens |
    responses:     | model turn | env observation + template glue | model turn | right padding |
    response_mask: |  1 1 1 1   |             0 0 0 0             |  1 1 1 1   |    0 0 0      |

Prompts are left-padded to P and responses right-padded to R, so every row's response starts
at column P and the response logits of the whole batch sit in one slice. The local trainer
wraps these tensors in a PaddedBatch, the verl trainer in a DataProto (verl's agent-loop layout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from erl.core.types import SEGMENT_IDS, TokenSample


def pad_rows(samples: Sequence[TokenSample], pad_id: int) -> dict[str, torch.Tensor]:
    """prompts [B, P], responses [B, R], input_ids / attention_mask / position_ids [B, P + R],
    response_mask [B, R] (long, 1 on model tokens), rollout_log_probs [B, R], segment_ids and
    rewards [B]. Attention covers every real token (env observations too), 0 on padding."""
    if not samples:
        raise ValueError("pad_rows: no samples (every episode produced nothing to train on)")
    P = max(len(s.prompt_ids) for s in samples)
    R = max(len(s.response_ids) for s in samples)
    B = len(samples)
    prompts = torch.full((B, P), pad_id, dtype=torch.long)
    responses = torch.full((B, R), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + R), dtype=torch.long)
    rmask = torch.zeros((B, R), dtype=torch.long)
    logp = torch.zeros((B, R), dtype=torch.float32)
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        if p == 0:  # a row with no prompt has no position to predict its first token from
            raise ValueError(f"sample {i} ({s.episode_id}, {s.segment.value}) has an empty prompt")
        prompts[i, P - p:] = torch.tensor(s.prompt_ids, dtype=torch.long)
        responses[i, :r] = torch.tensor(s.response_ids, dtype=torch.long)
        attn[i, P - p:P + r] = 1
        rmask[i, :r] = torch.tensor(s.response_mask, dtype=torch.long)
        logp[i, :r] = torch.tensor(s.logprobs, dtype=torch.float32)
    # Positions count real tokens only, as generation under left padding does.
    return {"prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp(min=0), "response_mask": rmask,
            "rollout_log_probs": logp,
            "segment_ids": torch.tensor([SEGMENT_IDS[s.segment] for s in samples], dtype=torch.long),
            "rewards": torch.tensor([s.reward for s in samples], dtype=torch.float32)}
