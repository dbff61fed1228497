"""Training rows -> padded tensors, in the layouts the two trainers train on.

    prompts:       |<- left padding ->| prompt tokens |
    responses:     | model turn | env observation + template glue | model turn | right padding |
    response_mask: |  1 1 1 1   |             0 0 0 0             |  1 1 1 1   |    0 0 0      |

pad_rows: prompts left-padded to P and responses right-padded to R, so every row's response
starts at column P and the response logits of the whole batch sit in one slice: verl's agent-loop
layout, which the verl trainer wraps in a DataProto.

right_pad_rows: each row's prompt and response back to back, padded at the end only, the layout
the local trainer trains on. A micro-batch of rows sorted by length then pads to its longest row
(not to its longest prompt plus its longest response: 0.68 of the padded tokens were real on an
ERL step's rows, docs/gpu/step_ratio), and no real token has a pad before it, so attention needs
no mask but causality (SDPA's causal kernels; no query attends to nothing, the cause of the bf16
NaN gradients of left-padded rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from erl.core.types import SEGMENT_IDS, TokenSample


def pad_rows(samples: Sequence[TokenSample], pad_id: int) -> dict[str, torch.Tensor]:
    """prompts [B, P], responses [B, R], input_ids / attention_mask / position_ids [B, P + R],
    response_mask [B, R] (long, 1 on model tokens), rollout_log_probs [B, R], segment_ids and
    rewards [B]. Attention covers every real token (env observations too), 0 on padding."""
    out = _responses(samples, pad_id)
    P = max(len(s.prompt_ids) for s in samples)
    prompts = torch.full((len(samples), P), pad_id, dtype=torch.long)
    attn = torch.zeros((len(samples), P + out["responses"].shape[1]), dtype=torch.long)
    for i, s in enumerate(samples):
        p = len(s.prompt_ids)
        prompts[i, P - p:] = torch.tensor(s.prompt_ids, dtype=torch.long)
        attn[i, P - p:P + len(s.response_ids)] = 1
    # Positions count real tokens only, as generation under left padding does.
    return {"prompts": prompts, "input_ids": torch.cat([prompts, out["responses"]], dim=1), "attention_mask": attn,
            "position_ids": (attn.cumsum(-1) - 1).clamp(min=0), **out}


def right_pad_rows(samples: Sequence[TokenSample], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask [B, T]: each row's prompt then its response from column 0,
    padding after (T the longest row; positions are the columns); starts [B]: the column of
    each row's first response token (its prompt's length); responses, response_mask,
    rollout_log_probs [B, R], segment_ids and rewards [B] as in pad_rows."""
    out = _responses(samples, pad_id)
    T = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    ids = torch.full((len(samples), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(samples), T), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.prompt_ids) + len(s.response_ids)
        ids[i, :n] = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        attn[i, :n] = 1
    starts = torch.tensor([len(s.prompt_ids) for s in samples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attn, "starts": starts, **out}


def _responses(samples: Sequence[TokenSample], pad_id: int) -> dict[str, torch.Tensor]:
    """What both layouts share: responses, response_mask, rollout_log_probs [B, R] right-padded;
    segment_ids, rewards [B]. Refuses a row with an empty prompt."""
    if not samples:
        raise ValueError("pad_rows: no samples (every episode produced nothing to train on)")
    R = max(len(s.response_ids) for s in samples)
    B = len(samples)
    responses = torch.full((B, R), pad_id, dtype=torch.long)
    rmask = torch.zeros((B, R), dtype=torch.long)
    logp = torch.zeros((B, R), dtype=torch.float32)
    for i, s in enumerate(samples):
        if not s.prompt_ids:  # a row with no prompt has no position to predict its first token from
            raise ValueError(f"sample {i} ({s.episode_id}, {s.segment.value}) has an empty prompt")
        r = len(s.response_ids)
        responses[i, :r] = torch.tensor(s.response_ids, dtype=torch.long)
        rmask[i, :r] = torch.tensor(s.response_mask, dtype=torch.long)
        logp[i, :r] = torch.tensor(s.logprobs, dtype=torch.float32)
    return {"responses": responses, "response_mask": rmask, "rollout_log_probs": logp,
            "segment_ids": torch.tensor([SEGMENT_IDS[s.segment] for s in samples], dtype=torch.long),
            "rewards": torch.tensor([s.reward for s in samples], dtype=torch.float32)}
