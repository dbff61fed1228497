"""ERL step time / compute-matched RLVR step time on the local trainer, side by side in one run:
the twin of benchmarks/verl_step.py (its alternation, medians and report).

    python benchmarks/local_step.py --steps 2                                     # the default run (CPU)
    python benchmarks/local_step.py --set preset=gpu --set model.path=/tmp/smollm2 --steps 3   # one GPU
    python benchmarks/local_step.py ... --engine-set admit_wait=32         # a rollout engine attribute, both runs

Both trainers come from erl-train's config (configs/local, with the --set overrides), one with
erl.mode=erl and one with erl.mode=rlvr (2n first attempts a task: the same episodes per task),
each with its own copy of the same starting weights; their steps alternate (ERL, RLVR, ERL, ...)
so drift of the machine affects both alike. Nothing is logged or checkpointed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import erl.cli  # noqa: F401 -- erl-train's OpenMP wait policy, set before torch loads OpenMP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout import set_attribute  # how --engines sets an engine attribute
from verl_step import finish, side_by_side  # the same alternation and report as verl's


def local_trainer(sets: list[str], mode: str, out: Path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from erl.cli.app import config_dir
    from erl.trainers.local.run import build

    overrides = [*sets, f"erl.mode={mode}", f"trainer.output_dir={out}", "trainer.progress=false",
                 "trainer.save_every=0", "trainer.save_every_minutes=0"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = OmegaConf.to_container(compose("train", overrides=overrides), resolve=True)
    trainer, _ = build(cfg)
    return trainer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], help="an erl-train override for both runs (repeatable)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="", help="write the medians as JSON here")
    p.add_argument("--engine-set", action="append", default=[], metavar="ATTR=VALUE",
                   help="set a number or flag on both trainers' rollout engine, e.g. admit_wait=32; net.ATTR for its "
                        "forward (SlotModel)")
    args = p.parse_args(argv)
    sets = [s for s in args.set if not s.startswith("erl.mode=")]
    with tempfile.TemporaryDirectory() as tmp:
        erl = local_trainer(sets, "erl", Path(tmp) / "erl")
        rlvr = local_trainer(sets, "rlvr", Path(tmp) / "rlvr")
        for item in args.engine_set:
            for trainer in (erl, rlvr):
                try:
                    set_attribute(trainer.policy, item)
                except ValueError as exc:
                    p.error(f"--engine-set: {exc}")
        res = side_by_side(erl, rlvr, args.warmup, args.steps)
    print(f"local trainer, {' '.join(sets + args.engine_set) or 'the default config'}: {erl.cfg.tasks_per_step} tasks a step, "
          f"ERL n={erl.erl.n_attempt}, RLVR {2 * erl.erl.n_attempt} first attempts a task, device {erl.device}")
    return finish(res, args.out)


if __name__ == "__main__":
    sys.exit(main())
