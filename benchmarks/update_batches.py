"""The local trainer's update under several micro-batch settings, side by side on the same rows.

    python benchmarks/update_batches.py --set preset=gpu --set model.path=/tmp/smollm2   # one GPU
    python benchmarks/update_batches.py --set trainer.tasks_per_step=8 --micro 4:0 16:0 64:4096  # CPU

One ERL step's rows are collected once (after a warm-up collect); then each setting
`ROWS:TOKENS` (trainer.micro_batch_size : trainer.micro_batch_tokens, 0 = no token budget)
updates a fresh copy of the same starting weights on those rows, `--repeats` times (the first
setting once more before the timed ones, untimed: kernels and allocator warm), and the
median seconds, micro-batches, peak GPU memory and the ratio to the first setting are printed.
`--profile-collect N`: also cProfile a collect and print its N most expensive functions, by own
time and by time with callees (the host-side split of a rollout, which a CUDA profile does not show).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import erl.cli  # noqa: F401 -- erl-train's OpenMP wait policy, set before torch loads OpenMP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_step import local_trainer  # erl-train's config, with overrides


def main(argv: list[str] | None = None) -> int:
    import torch

    from erl.core.samples import episode_to_samples
    from erl.trainers.driver import seed_all
    from erl.trainers.local.batch import pad_samples  # the trainer's layout

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], help="an erl-train override (repeatable)")
    p.add_argument("--micro", nargs="+", default=["32:0", "128:0", "1024:32768", "1024:65536"],
                   help="ROWS:TOKENS settings; the first is the baseline of the ratios")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--profile-collect", type=int, default=0, metavar="N")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = local_trainer(args.set, "erl", Path(tmp))
        seed_all(0)
        trainer.collect(trainer.next_tasks())  # warm-up: graphs recorded, allocator grown
        if hasattr(trainer.policy, "reset_stats"):
            trainer.policy.reset_stats()
        prof = cProfile.Profile() if args.profile_collect else None
        start = time.perf_counter()
        if prof:
            prof.enable()
        episodes = trainer.collect(trainer.next_tasks())
        if prof:
            prof.disable()
        collect_s = time.perf_counter() - start
        rows = [r for ep in episodes for r in episode_to_samples(ep)]
        stats = dict(trainer.policy.stats)
        print(f"collect {collect_s:.2f} s ({len(episodes)} episodes, {len(rows)} rows, "
              f"{sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)} tokens); engine "
              + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
        if prof:
            for key in ("tottime", "cumulative"):  # own time, then time with callees
                text = io.StringIO()
                pstats.Stats(prof, stream=text).sort_stats(key).print_stats(args.profile_collect)
                print(text.getvalue())
        adv = trainer.advantages(rows)
        start_state = copy.deepcopy(trainer.model.state_dict())
        start_optim = copy.deepcopy(trainer.optimizer.state_dict())
        cuda = trainer.device.type == "cuda"
        results = []
        for index, setting in enumerate([args.micro[0], *args.micro]):  # the first one once untimed (warm-up)
            size, tokens = (int(x) for x in setting.split(":"))
            trainer.cfg.micro_batch_size, trainer.cfg.micro_batch_tokens = size, tokens
            times = []
            for _ in range(args.repeats if index else 1):  # the warm-up runs once
                trainer.model.load_state_dict(start_state)
                trainer.optimizer.load_state_dict(start_optim)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t = time.perf_counter()
                trainer.update(rows, adv)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            if index == 0:
                continue
            chunks, _, _, skip = trainer.micro_batches(rows, adv)
            run = [idx for idx, skipped in zip(chunks, skip) if not skipped]  # the micro-batches the update runs
            padded = sum(pad_samples([rows[i] for i in idx], 0).input_ids.numel() for idx in run)
            real = sum(len(rows[i].prompt_ids) + len(rows[i].response_ids) for idx in run for i in idx)
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            results.append((setting, statistics.median(times), len(run), real / max(padded, 1), peak))
        base = results[0][1]
        print(f"{'rows:tokens':>14} {'seconds':>8} {'run chunks':>10} {'real/padded':>11} {'peak GB':>8} {'vs first':>9}")
        for setting, sec, chunks, fill, peak in results:
            print(f"{setting:>14} {sec:8.3f} {chunks:10d} {fill:11.2f} {peak:8.1f} {base / sec:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
