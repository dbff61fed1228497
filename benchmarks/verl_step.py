"""ERL step time / compute-matched GRPO (RLVR) step time, measured side by side in one run.

Both trainers share one verl worker group (same GPUs, same model, same rollout backend)
and the same task stream; their steps alternate (ERL, RLVR, ERL, RLVR, ...), so drift of
the machine affects both alike. RLVR samples 2n first attempts per task, ERL n first + up
to n second attempts + reflections: the same rollout budget per task (ERL_SPEC section 1).

    python benchmarks/verl_step.py --config frozenlake_erl --warmup 1 --steps 3 -- \
        actor_rollout_ref.model.path=/models/SmolLM2 actor_rollout_ref.rollout.name=hf \
        trainer.n_gpus_per_node=1 data.train_batch_size=4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from erl.core.metrics import updated_tokens
from erl.trainers.heap import settled_heap

TARGET = 1.5  # issue 11: an ERL step at most 1.5x the compute-matched RLVR step
KEYS = ("time/step", "time/rollout", "time/reflection", "time/update", "time/old_log_prob", "time/ref_log_prob", "time/update_actor",
        "time/sync_weights", "rollout/sequences", "rollout/batches", "tokens/generated", "rows", "tokens/total",
        "throughput/gen_tokens_per_s", "throughput/update_tokens_per_s", "rollout/graphs_recorded", "rollout/decode_steps",
        "rollout/prefill_forwards", "time/rollout_prefill", "time/rollout_decode", "time/rollout_gpu_wait",
        "time/rollout_engine", "rollout/logprob_gap_mean", "rollout/logprob_gap_max")
# the per-step lines of the report: metric -> (column title, format); ERL_ONLY: no RLVR column
# (engine: the rollout engine's own seconds, the rest of rollout being the episodes' code; upd tok: the
# update's tokens, idle tok: those of its rows without gradient, which the local update skips; passes: its
# micro-batches run, retries: the CUDA allocator's retries during it)
STEP_KEYS = {"time/step": ("step", ".3f"), "time/rollout": ("rollout", ".3f"), "time/rollout_engine": ("engine", ".3f"),
             "time/reflection": ("refl", ".3f"), "time/update": ("update", ".3f"), "tokens/generated": ("gen tok", ".0f"),
             "tokens/total": ("upd tok", ".0f"), "train/idle_tokens": ("idle tok", ".0f"),
             "train/micro_batches": ("passes", ".0f"), "perf/update_alloc_retries": ("retries", ".0f"),
             "perf/gc_full_seconds": ("gc s", ".3f"), "perf/gc_settle_seconds": ("settle s", ".3f"),
             "system/peak_rss_gb": ("rss GB", ".2f"),
             "attempt/turns": ("turns", ".2f"), "attempt1/success": ("succ1", ".3f"),
             "reflection/rate": ("refl rate", ".3f"), "memory/size": ("memory", ".0f")}
ERL_ONLY = ("time/reflection", "reflection/rate", "memory/size")


def side_by_side(erl, rlvr, warmup: int = 1, steps: int = 3) -> dict:
    """Alternate steps of the two trainers; medians of the measured (post-warm-up) steps."""
    runs: dict[str, list[dict]] = {"erl": [], "rlvr": []}
    with settled_heap(erl, rlvr):  # each step settles it, as in a trainer's fit
        for i in range(warmup + steps):
            for name, trainer in (("erl", erl), ("rlvr", rlvr)):
                m = trainer.step()
                if i >= warmup:
                    runs[name].append(m)
    # a key no step logged is left out (the report skips it); one logged as 0 stays, as 0
    out = {name: {k: statistics.median(float(m.get(k, 0.0)) for m in ms) for k in KEYS if any(k in m for m in ms)}
           for name, ms in runs.items()}
    out["ratio/step_time"] = out["erl"]["time/step"] / max(out["rlvr"]["time/step"], 1e-9)
    out["ratio/rollout_time"] = out["erl"]["time/rollout"] / max(out["rlvr"]["time/rollout"], 1e-9)
    out["ratio/update_time"] = out["erl"]["time/update"] / max(out["rlvr"]["time/update"], 1e-9)
    # each ERL step over the RLVR step right after it: the spread says how far one median can be trusted
    # (two runs of the same code on one H200 gave 1.625 and 1.467: docs/gpu/host_split/call8)
    erl_times, rlvr_times = ([m["time/step"] for m in runs[k]] for k in ("erl", "rlvr"))
    out["ratio/pairs"] = pair_ratios(erl_times, rlvr_times)
    out["ratio/step_time_interval"] = ratio_interval(erl_times, rlvr_times)
    # what ERL's step spends beyond TARGET x RLVR's, by phase: where the gap to issue 11's target lies
    out["excess"] = {k: out["erl"][k] - TARGET * out["rlvr"][k] for k in ("time/step", "time/rollout", "time/update")}
    # each measured step's phases and outcomes: a median hides a ratio that moves along the run (it rose
    # from ~1.6 to ~1.9 over 8 local steps: docs/gpu/memory_retrieval/README.md)
    out["per_step"] = {name: [{k: float(m[k]) for k in STEP_KEYS if k in m} for m in ms] for name, ms in runs.items()}
    out["work"] = work_ratios(out["per_step"])
    out["steps"], out["warmup"] = steps, warmup
    return out


def pair_ratios(erl: list[float], rlvr: list[float]) -> list[float]:
    """Each ERL step time over the RLVR step's after it."""
    return [e / max(r, 1e-9) for e, r in zip(erl, rlvr)]


def at_most_target(pairs: list[float]) -> int:
    """How many step pairs met issue 11's TARGET."""
    return sum(p <= TARGET for p in pairs)


def ratio_interval(erl: list[float], rlvr: list[float], level: float = 0.9, draws: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """A `level` bootstrap interval of median(ERL steps) / median(RLVR steps): the step pairs (ERL's
    step and the RLVR step right after it, which share the machine's state) are drawn with
    replacement, `draws` times, under a fixed seed. "ERL / RLVR <= 1.5, reliably" then reads as the
    interval's upper end at most 1.5, where one median cannot say it (pairs of one run went 1.27-1.99:
    docs/gpu/verl_copy/c4/step.txt)."""
    e, r = np.asarray(erl, dtype=float), np.asarray(rlvr, dtype=float)
    if len(e) != len(r) or not len(e):
        raise ValueError(f"ratio_interval needs step pairs, got {len(e)} ERL and {len(r)} RLVR steps")
    picks = np.random.default_rng(seed).integers(0, len(e), size=(draws, len(e)))
    ratios = np.median(e[picks], axis=1) / np.maximum(np.median(r[picks], axis=1), 1e-9)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


def work_ratios(per_step: dict[str, list[dict]]) -> dict[str, float]:
    """ERL / RLVR in work and in time per unit of work, medians over the step pairs: generated tokens,
    update tokens with a gradient (`tokens/total` less `train/idle_tokens`, the rows the update runs),
    rollout seconds per generated token, update seconds per such token, and the step ratio ERL would
    have at RLVR's rates (RLVR's rollout and update times scaled by the two work ratios). The
    time ratio less this one is what ERL loses per unit of work: its chain of phases, its longer rows."""
    rows = []
    for e, r in zip(per_step.get("erl", []), per_step.get("rlvr", [])):
        if any(k not in m for k in ("tokens/generated", "tokens/total", "time/rollout", "time/update") for m in (e, r)):
            return {}  # a trainer that does not log its work
        gen = e["tokens/generated"] / max(r["tokens/generated"], 1.0)
        upd = updated_tokens(e) / max(updated_tokens(r), 1.0)
        rows.append({"generated_tokens": gen, "update_tokens": upd,
                     "rollout_time_per_token": e["time/rollout"] / max(r["time/rollout"], 1e-9) / gen,
                     "update_time_per_token": e["time/update"] / max(r["time/update"], 1e-9) / max(upd, 1e-9),
                     "step_at_equal_rates": (gen * r["time/rollout"] + upd * r["time/update"])
                                            / max(r["time/rollout"] + r["time/update"], 1e-9)})
    return {k: statistics.median(row[k] for row in rows) for k in rows[0]} if rows else {}


def report(res: dict) -> str:
    lines = [f"{'median over ' + str(res['steps']) + ' steps':34s} {'ERL':>12s} {'RLVR (GRPO)':>12s}"]
    for k in KEYS:
        if k not in res["erl"] and k not in res["rlvr"]:  # a metric the trainer does not log (the local one: no old_log_prob)
            continue
        lines.append(f"{k:34s} {res['erl'].get(k, 0.0):12.3f} {res['rlvr'].get(k, 0.0):12.3f}")
    lines.append(f"ERL / RLVR step time: {res['ratio/step_time']:.3f}  (rollout {res['ratio/rollout_time']:.3f}, "
                 f"update {res['ratio/update_time']:.3f})")
    lines.append("ERL / RLVR step by step: " + ", ".join(f"{r:.3f}" for r in res["ratio/pairs"]))
    if "ratio/step_time_interval" in res:
        low, high = res["ratio/step_time_interval"]
        lines.append(f"ERL / RLVR step time, 90% bootstrap interval over the step pairs: {low:.3f}-{high:.3f}; "
                     f"pairs at most {TARGET}: {at_most_target(res['ratio/pairs'])} of {len(res['ratio/pairs'])}")
    lines += per_step_lines(res.get("per_step", {}))
    w = res.get("work")
    if w:
        lines.append(f"ERL / RLVR work: generated tokens {w['generated_tokens']:.3f}, update tokens with a gradient "
                     f"{w['update_tokens']:.3f}; time per unit: rollout {w['rollout_time_per_token']:.3f}, update "
                     f"{w['update_time_per_token']:.3f}; at RLVR's rates the step ratio would be {w['step_at_equal_rates']:.3f}")
    ex = res["excess"]
    lines.append(f"ERL - {TARGET} x RLVR: step {ex['time/step']:+.3f} s (rollout {ex['time/rollout']:+.3f}, "
                 f"update {ex['time/update']:+.3f})")
    return "\n".join(lines)


def per_step_lines(per_step: dict[str, list[dict]]) -> list[str]:
    """One line a measured step: ERL's and RLVR's phases and outcomes, and the step-time ratio."""
    if not per_step or not per_step.get("erl"):
        return []
    cols = [(name, k) for name in ("erl", "rlvr") for k in STEP_KEYS
            if any(k in m for m in per_step[name]) and not (name == "rlvr" and k in ERL_ONLY)]
    lines = ["per step: " + " ".join(f"{name.upper() + ' ' + STEP_KEYS[k][0]:>13s}" for name, k in cols) + "    ratio"]
    for i, (e, r) in enumerate(zip(per_step["erl"], per_step["rlvr"]), 1):
        row = {"erl": e, "rlvr": r}
        cells = " ".join(f"{row[name].get(k, float('nan')):13{STEP_KEYS[k][1]}}" for name, k in cols)
        lines.append(f"{i:>8d}: {cells} {e['time/step'] / max(r['time/step'], 1e-9):8.3f}")
    return lines


def finish(res: dict, out: str) -> int:
    """Print the report and write the medians as JSON to `out` (when given)."""
    print(report(res))
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="frozenlake_erl")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="", help="write the medians as JSON here")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for both runs")
    args = p.parse_args(argv)

    from erl.envs.registry import make_env
    from erl.trainers.verl.config import compose, validate
    from erl.trainers.verl.main import build
    from erl.trainers.verl.trainer import ErlVerlTrainer
    from erl.workflow.factories import chat_agent_for

    overrides = [o for o in args.overrides if not o.startswith("erl.mode=")]
    erl = build(compose(args.config, overrides + ["erl.mode=erl"]))
    erl.tracker = None
    s_rlvr = validate(compose(args.config, overrides + ["erl.mode=rlvr"]))
    rlvr = ErlVerlTrainer(s_rlvr, erl.tokenizer, erl.workers, erl.policy, None, erl.train_tasks, erl.val_tasks,
                          chat_agent_for, make_env)
    erl.workers.sync_weights(0)
    res = side_by_side(erl, rlvr, args.warmup, args.steps)
    res["perf/max_memory_gb"] = erl.workers.max_memory_gb()
    return finish(res, args.out)


if __name__ == "__main__":
    sys.exit(main())
