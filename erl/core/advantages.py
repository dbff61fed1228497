"""Advantages for ERL's training rows (ERL_SPEC section 2).

GRPO groups are formed per task *and* per segment: the attempt-1 samples of task k are
compared with each other, reflections with reflections, attempt-2s with attempt-2s. The
rules, in order:
  * a group of one keeps its raw reward (there is nothing to compare it with);
  * a group whose rewards are all equal gets 0 (no signal, and no division by zero);
  * otherwise r - mean(group), divided by (std + eps) when `norm_by_std` (std with
    Bessel's correction, as verl's GRPO estimator computes it).
Distillation rows are not a GRPO group: in `raft` mode they carry max(r2, 0) on every
token (the reference code's choice), in `sft` mode their advantage is 0 because they are
trained by the separate masked NLL term (erl.core.losses.distill_nll_loss).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from erl.core.types import SEGMENT_IDS, Segment, TokenSample

DISTILL_ID = SEGMENT_IDS[Segment.DISTILL]
_NAMES = {i: s.value for s, i in SEGMENT_IDS.items()}


def grpo_advantages(rewards: Sequence[float] | torch.Tensor, group_keys: Sequence[str],
                    norm_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """One scalar advantage per row, normalised within rows that share a group key."""
    r = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    if len(group_keys) != r.numel():
        raise ValueError(f"grpo_advantages: {r.numel()} rewards but {len(group_keys)} group keys")
    adv = torch.zeros_like(r)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(group_keys):
        groups[key].append(i)
    for rows in groups.values():
        g = r[rows]
        if len(rows) == 1:
            adv[rows] = g
        elif bool((g == g[0]).all()):
            adv[rows] = 0.0
        else:
            centered = g - g.mean()
            adv[rows] = centered / (g.std(unbiased=True) + eps) if norm_by_std else centered
    return adv


def raft_advantages(rewards: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """RAFT: imitate what earned reward, never push away from it: max(r, 0)."""
    return torch.as_tensor(rewards, dtype=torch.float32).clamp(min=0.0)


def advantages_from_arrays(rewards: Sequence[float] | torch.Tensor, task_ids: Sequence[str],
                           segment_ids: Sequence[int] | torch.Tensor, norm_by_std: bool = True,
                           distill_mode: str = "sft", eps: float = 1e-6) -> torch.Tensor:
    """The ERL advantage of each row from plain per-row arrays (what a DataProto holds)."""
    r = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    segs = [int(s) for s in torch.as_tensor(segment_ids).flatten().tolist()]
    if not (len(task_ids) == len(segs) == r.numel()):
        raise ValueError(f"advantages_from_arrays: lengths differ: rewards {r.numel()}, "
                         f"task_ids {len(task_ids)}, segment_ids {len(segs)}")
    unknown = sorted(set(segs) - set(_NAMES))
    if unknown:
        raise ValueError(f"advantages_from_arrays: unknown segment id(s) {unknown}")
    adv = torch.zeros_like(r)
    distill = [i for i, s in enumerate(segs) if s == DISTILL_ID]
    policy = [i for i, s in enumerate(segs) if s != DISTILL_ID]
    if policy:
        keys = [f"{task_ids[i]}|{_NAMES[segs[i]]}" for i in policy]
        adv[policy] = grpo_advantages(r[policy], keys, norm_by_std, eps)
    if distill and distill_mode == "raft":
        adv[distill] = raft_advantages(r[distill])
    return adv


def segment_advantages(samples: Sequence[TokenSample], norm_by_std: bool = True,
                       distill_mode: str = "sft", eps: float = 1e-6) -> torch.Tensor:
    """`advantages_from_arrays` over TokenSamples (the local trainer's rows)."""
    return advantages_from_arrays([s.reward for s in samples], [s.task_id for s in samples],
                                  [SEGMENT_IDS[s.segment] for s in samples], norm_by_std, distill_mode, eps)
