"""`erl-train`: the Hydra app over configs/ (trainer, env, model, erl groups).

    erl-train                                   # FrozenLake, SmolLM2-135M-Instruct, ERL, CPU
    erl-train env=sokoban erl.mode=rlvr trainer.total_steps=50
    erl-train model.path=/models/Qwen3-4B-Instruct-2507 trainer.device=cuda
    erl-train resume=true                       # continue the run in trainer.output_dir
"""

from __future__ import annotations

import sys
from pathlib import Path

from erl.core.config import ConfigError


def config_dir() -> Path:
    """configs/ at the repository root (installed editable) or shipped inside the package."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "configs", here.parents[1] / "configs"):
        if (cand / "train.yaml").is_file():
            return cand
    raise FileNotFoundError("cannot find the configs/ directory with train.yaml")


def call_with_config(prog: str, fn, cfg) -> tuple[dict, object]:
    """Resolve a Hydra config to a plain dict and call fn(plain); a bad config, checkpoint or
    path ends the program with its message and exit code 2, not a traceback."""
    from omegaconf import OmegaConf

    from erl.trainers.local.checkpoint import CheckpointError
    from erl.trainers.local.numerics import NonFiniteStepError

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    try:
        return plain, fn(plain)
    except (ConfigError, CheckpointError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteStepError as exc:  # a numerical failure of the run, not of its inputs
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(1)


def _run(cfg) -> None:
    from erl.trainers.local.run import train

    plain, last = call_with_config("erl-train", train, cfg)
    shown = {k: round(v, 3) for k, v in last.items() if k.startswith(("eval/", "attempt1/success", "attempt2/success"))}
    print(f"erl-train: done -> {plain['trainer']['output_dir']}  {shown}")


def main() -> None:
    import hydra

    hydra.main(config_path=str(config_dir()), config_name="train", version_base=None)(_run)()


if __name__ == "__main__":
    main()
