"""Episodes -> one verl DataProto: a row per segment sample (attempt1, reflection, attempt2, distill).

Layout is verl's agent-loop layout, so its engine workers, padding helpers and
metrics read it unchanged:

    prompts:       |<- left padding ->| prompt tokens |
    responses:     | model turn | env observation + template glue | model turn | right padding |
    response_mask: |  1 1 1 1   |             0 0 0 0             |  1 1 1 1   |    0 0 0      |
    attention_mask covers every real token (prompt and response), 0 on padding.

Per row we add `segment_ids` [B] (erl.core.types.SEGMENT_IDS), `rewards` [B] (r1 for
attempt1, r2 for the rest: set by the workflow), and `rollout_log_probs` [B, R]; the
non-tensor `uid` is "task|segment", the GRPO group of the row (ERL_SPEC section 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from erl.core.advantages import advantages_from_arrays
from erl.core.padding import pad_rows
from erl.core.samples import episode_to_samples
from erl.core.types import Episode, TokenSample


def object_array(items: list) -> np.ndarray:
    """A 1-d object array of `items` for a DataProto's non-tensor batch, even when every item has
    the same length (np.array would stack them into a 2-d array)."""
    arr = np.empty(len(items), dtype=object)
    for k, x in enumerate(items):
        arr[k] = x
    return arr


def samples_to_dataproto(samples: Sequence[TokenSample], pad_id: int):
    """Pad TokenSamples into a DataProto (prompts left-padded, responses right-padded)."""
    from verl import DataProto

    tensors = pad_rows(samples, pad_id)
    non_tensors = {
        "uid": np.array([s.group_key for s in samples], dtype=object),
        "task_id": np.array([s.task_id for s in samples], dtype=object),
        "segment": np.array([s.segment.value for s in samples], dtype=object),
        "episode_id": np.array([s.episode_id for s in samples], dtype=object),
    }
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)


def episodes_to_dataproto(episodes: Sequence[Episode], pad_id: int):
    """Flatten episodes with the core's episode_to_samples, then pad (one code path for
    every trainer: the local trainer trains on exactly these rows too)."""
    samples = [row for ep in episodes for row in episode_to_samples(ep)]
    return samples_to_dataproto(samples, pad_id), samples


def add_advantages(data, norm_by_std: bool = True, distill_mode: str = "sft", advantages=None):
    """Write ERL's advantages (erl.core.advantages; `advantages`: one per row, already
    computed by the driver) into `advantages` [B, R] and the verl-compatible
    `token_level_scores` / `token_level_rewards` (the reward on each row's last response
    token), so verl's data metrics read the batch as they read their own."""
    b = data.batch
    adv = advantages if advantages is not None else advantages_from_arrays(
        b["rewards"], list(data.non_tensor_batch["task_id"]), b["segment_ids"], norm_by_std=norm_by_std,
        distill_mode=distill_mode)
    mask = b["response_mask"].float()
    b["advantages"] = adv.unsqueeze(-1) * mask
    b["returns"] = b["advantages"].clone()
    scores = torch.zeros_like(mask)
    last = (b["attention_mask"][:, b["prompts"].shape[1]:].sum(-1) - 1).clamp(min=0)
    scores[torch.arange(len(last)), last] = b["rewards"]
    b["token_level_scores"] = scores
    b["token_level_rewards"] = scores.clone()
    return data


def pad_to_multiple(data, multiple: int):
    """Append copies of row 0 that train nothing (response_mask 0, advantage 0) until the
    row count divides by `multiple` (the data-parallel size). Returns (data, n_added)."""
    from verl import DataProto

    n = len(data)
    extra = (-n) % multiple
    if extra == 0:
        return data, 0
    filler = data.select_idxs([0] * extra)
    filler.batch["response_mask"] = torch.zeros_like(filler.batch["response_mask"])
    for key in ("advantages", "returns", "token_level_scores", "token_level_rewards"):
        if key in filler.batch.keys():  # noqa: SIM118 - a TensorDict, not a dict
            filler.batch[key] = torch.zeros_like(filler.batch[key])
    filler.non_tensor_batch["uid"] = np.array(["__pad__"] * extra, dtype=object)
    return DataProto.concat([data, filler]), extra


def to_engine_tensordict(data, *, temperature: float, **meta):
    """DataProto -> the no-padding TensorDict verl's engine workers take, with the
    per-call settings (temperature, batch sizes, ...) as non-tensor entries."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    td = left_right_2_no_padding(data.to_tensordict())
    tu.assign_non_tensor(td, temperature=float(temperature), **meta)
    return td
