"""`erl-train`: the Hydra app over configs/local/ (trainer, env, model, erl groups).

    erl-train                                   # FrozenLake, SmolLM2-135M-Instruct, ERL, CPU
    erl-train env=sokoban erl.mode=rlvr trainer.total_steps=50
    erl-train model.path=/models/Qwen3-4B-Instruct-2507 trainer.device=cuda
    erl-train resume=true                       # continue the run in trainer.output_dir
"""

from __future__ import annotations

import sys

from erl.cli.app import config_dir, hydra_app

__all__ = ["call_with_config", "config_dir", "main"]  # config_dir: kept importable from here


def call_with_config(prog: str, fn, cfg) -> tuple[dict, object]:
    """Resolve a Hydra config to a plain dict and call fn(plain); a bad config, checkpoint or
    path ends the program with its message and exit code 2, not a traceback."""
    from omegaconf import OmegaConf

    from erl.cli.app import input_errors
    from erl.trainers.driver import NonFiniteStepError

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    try:
        return plain, fn(plain)
    except input_errors() as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteStepError as exc:  # a numerical failure of the run, not of its inputs
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(1)


def _run(cfg) -> None:
    from erl.trainers.local.run import train

    plain, last = call_with_config("erl-train", train, cfg)
    shown = {k: round(v, 3) for k, v in last.items() if k.startswith(("eval/", "attempt1/success", "attempt2/success"))}
    step, total = int(last.get("train/last_step", 0)), int(plain["trainer"]["total_steps"])
    status = "done" if step >= total else f"stopped at step {step} of {total} (trainer.time_budget_s; resume=true goes on)"
    print(f"erl-train: {status} -> {plain['trainer']['output_dir']}  {shown}")


def gpu_scale_default(argv: list[str]) -> list[str]:
    """The README's one command trains at GPU scale on a CUDA machine: without an explicit
    `preset=` (or a device choice), CUDA present means `preset=gpu`; `preset=null` keeps the
    minutes-long CPU-sized demo."""
    chosen = any(a.split("=", 1)[0].lstrip("+~") in ("preset", "trainer.device") for a in argv[1:])
    if chosen or any(a in ("-h", "--help", "--cfg", "-c", "--info") for a in argv[1:]):
        return argv
    import torch

    if not torch.cuda.is_available():
        return argv
    print("erl-train: CUDA found, training at GPU scale (preset=gpu: 64 tasks x 8 episodes a step, bf16); "
          "preset=null for the small CPU-sized run", file=sys.stderr)
    return [*argv, "preset=gpu"]


def main() -> None:
    sys.argv = gpu_scale_default(sys.argv)
    hydra_app("erl-train", "train", _run)


if __name__ == "__main__":
    main()
