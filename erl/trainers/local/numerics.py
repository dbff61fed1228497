"""Non-finite steps: detect them before they reach the weights, and record enough to find why.

A single NaN gradient, once applied, turns every weight into NaN and the run into noise
(seen on the GPU in bf16: eval fell to 0.0 and sampling then asserted on NaN probabilities).
The trainer therefore refuses such an update, counts it (`train/skipped_steps`), writes the
batch's facts to `nonfinite.jsonl`, and stops after `trainer.max_consecutive_skips` in a row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def grads_finite(model: torch.nn.Module) -> torch.Tensor:
    """A 0-dim bool tensor, not read back: one multi-tensor norm kernel, and no wait for the
    device until the caller reads it (the update reads all micro-batches' flags at once)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    return torch.isfinite(torch.stack(torch._foreach_norm(grads)).float().sum())


def nonfinite_facts(where: str, rows: list, batch: Any, logp: torch.Tensor | None, adv: torch.Tensor,
                    loss: torch.Tensor | None, precision: str) -> dict[str, Any]:
    """What a person debugging the step needs: sizes, padding, log-prob range, advantages."""
    facts: dict[str, Any] = {
        "where": where, "precision": precision, "rows": len(rows),
        "segments": sorted({str(getattr(r.segment, "value", r.segment)) for r in rows}),
        "prompt_lengths": [len(r.prompt_ids) for r in rows],
        "response_lengths": [len(r.response_ids) for r in rows],
        "trained_tokens": int(sum(sum(r.response_mask) for r in rows)),
        "adv_abs_max": float(adv.abs().max()) if adv.numel() else 0.0,
        "adv_finite": bool(torch.isfinite(adv).all()),
    }
    if loss is not None:
        facts["loss"] = float(loss.detach())
    if logp is not None and batch is not None:
        m = batch.response_mask.to(logp.device) > 0
        vals = logp.detach()[m]
        facts["logp_finite"] = bool(torch.isfinite(vals).all())
        finite = vals[torch.isfinite(vals)]
        facts["logp_min"] = float(finite.min()) if finite.numel() else None
        facts["padded_rows"] = int((batch.attention_mask == 0).any(dim=1).sum())  # shorter than the longest
    return facts


def log_nonfinite(out_dir: Path, facts: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "nonfinite.jsonl").open("a") as f:
        f.write(json.dumps(facts, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
