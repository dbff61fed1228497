"""Where a resumed local-trainer step departs from the original run's (twenty-fifth session).

The GPU check (run.sh local_resume) found step 3 of a run resumed from step 2 unlike the original's
step 3, while two resumed runs agree with each other. This builds, in one process on one GPU:
  A  the original: steps 1 and 2, a checkpoint, then step 3
  B  a trainer loaded from A's checkpoint: step 3 (the resumed run)
  C  the same as B (its control)
  D  loaded like B, but an eval runs through its rollout engine before step 3 (a history)
and prints what each holds before step 3 (weights, the rollout model's weights, memory, cursor)
and what each step 3 sampled.

    python docs/gpu/ratio_rise/resume_probe.py preset=gpu model.path=/tmp/smollm2
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from local_step import local_trainer  # erl-train's config with overrides -> a LocalTrainer

from erl.trainers.local.checkpoint import load_checkpoint

KEYS = ("attempt1/tokens", "attempt2/tokens", "reflection/tokens", "tokens/generated", "rollout/prefill_forwards",
        "rollout/decode_steps", "rollout/graphs_recorded", "memory/stored", "memory/duplicates", "loss/pg_loss")


def differing(a: dict, b: dict) -> list[str]:
    return [n for n in a if n not in b or not torch.equal(a[n], b[n])]


def rollout_state(trainer) -> dict:
    refresh = getattr(trainer.policy, "refresh", None)
    if callable(refresh):
        refresh()
    model = getattr(trainer.policy, "model", None)
    return {k: v.detach().clone() for k, v in model.state_dict().items()} if model is not None else {}


def main(sets: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        a = local_trainer(sets, "erl", Path(tmp) / "a")
        a.step()
        a.step()
        ckpt = load_checkpoint(a.save_checkpoint())
        others = {}
        for name in "bcd":
            t = others[name] = local_trainer(sets, "erl", Path(tmp) / name)
            t.load_state(ckpt)
        trainers = {"a": a, **others}
        ref_w, ref_r = a.model.state_dict(), rollout_state(a)
        for name, t in others.items():
            print(f"{name}: weights differing from a: {len(differing(ref_w, t.model.state_dict()))} of {len(ref_w)}; "
                  f"rollout model's: {len(differing(ref_r, rollout_state(t)))} of {len(ref_r)}; "
                  f"memory equal: {t.memory.state_dict() == a.memory.state_dict() if t.memory is not None else None}; "
                  f"cursor {t.cursor} / {a.cursor}; step {t.step_count} / {a.step_count}")
        print(f"rollout model is the trained model: {getattr(a.policy, 'model', None) is a.model}")
        others["d"].evaluate()
        res = {name: t.step() for name, t in trainers.items()}
    print(f"{'step 3':28s}" + "".join(f"{n:>14s}" for n in res))
    for k in KEYS:
        print(f"{k:28s}" + "".join(f"{float(m.get(k, float('nan'))):14.6g}" for m in res.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["preset=gpu", "model.path=/tmp/smollm2"]))
