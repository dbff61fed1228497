"""`python -m erl.trainers.verl.main --config-name frozenlake_erl [overrides]`: the verl ERL trainer.

Order matters: compose -> validate everything (config, env, model folder, chat template,
GPU split) -> build the task lists -> only then start Ray, the memory actor and the GPU
workers. A bad config never costs a cluster start.

    python -m erl.trainers.verl.main --config-name frozenlake_erl \
        actor_rollout_ref.model.path=/models/Qwen3-4B-Instruct-2507 trainer.n_gpus_per_node=8
    python -m erl.trainers.verl.main --config-name sokoban_rlvr actor_rollout_ref.rollout.name=hf
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from erl.core.config import ConfigError
from erl.fileio import CheckpointError, atomic_write
from erl.trainers.verl.config import Settings, config_dir, searchpath, validate


def make_tracker(settings: Settings):
    """erl's Tracker: metrics file (the one plots and resumes read), curves.png redrawn every
    step, and verl's trackers (trainer.logger: console, tensorboard, wandb, ...) as a sink."""
    from erl.tracking import Tracker

    tr = settings.cfg["trainer"]
    sinks = []
    backends = [b for b in (tr.get("logger") or []) if b]
    if backends:
        from verl.utils.tracking import Tracking

        sinks.append(Tracking(project_name=tr["project_name"], experiment_name=tr["experiment_name"],
                              default_backend=backends, config=settings.cfg))
    return Tracker(Path(tr["default_local_dir"]), loggers=[], filename=settings.trainer.metrics_file, sinks=sinks,
                   title=f"verl | {settings.env_name} | {settings.erl.mode} | {Path(settings.model_path).name}")


def init_ray(cfg: dict) -> None:
    """Local Ray with enough declared CPUs, or the cluster in RAY_ADDRESS (`ray start --head`)."""
    import ray

    if ray.is_initialized():
        return
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    kwargs = dict((cfg.get("ray_kwargs") or {}).get("ray_init") or {})
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    env = get_ppo_ray_runtime_env()
    env.setdefault("env_vars", {}).update({"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")})
    kwargs["runtime_env"] = {**env, **(kwargs.get("runtime_env") or {})}
    if not os.environ.get("RAY_ADDRESS") and "address" not in kwargs:
        kwargs.setdefault("num_cpus", max(os.cpu_count() or 1, 8))  # verl's queues need >= 8 declared
    ray.init(**kwargs)


def check_local_gpus(cfg: dict) -> None:
    """A local Ray (no RAY_ADDRESS, one node) gets this machine's GPUs: fewer than
    trainer.n_gpus_per_node is refused here, before Ray starts, not by verl's resource check after it."""
    tr = cfg["trainer"]
    if os.environ.get("RAY_ADDRESS") or int(tr.get("nnodes", 1)) != 1:
        return
    import torch

    want, have = int(tr["n_gpus_per_node"]), torch.cuda.device_count()
    if have < want:
        hint = "; without a GPU, the local trainer (erl-train) runs ERL on CPU" if not have else ""
        raise ConfigError(f"trainer.n_gpus_per_node={want} but this machine has {have} CUDA GPU(s){hint}")


def build(config: Any):
    """Validated settings -> tasks -> Ray -> memory -> workers -> trainer."""
    settings = validate(config)  # first: a bad config costs no verl / Ray import either
    from omegaconf import OmegaConf, open_dict
    from transformers import AutoTokenizer

    from erl.envs.registry import make_env, make_tasks
    from erl.trainers.verl.group import VerlWorkers
    from erl.trainers.verl.memory import create_memory
    from erl.trainers.verl.trainer import ErlVerlTrainer
    from erl.workflow.factories import chat_agent_for, load_runner

    runner = load_runner(settings.trainer.runner)  # an import error surfaces before Ray starts
    with open_dict(config):
        config.actor_rollout_ref.model.path = settings.model_path  # the checked, expanded folder
    env = settings.cfg["env"]
    seed = settings.trainer.seed
    train = make_tasks(settings.env_name, int(env["n_train"]), seed=seed, split="train", **settings.env_params)
    val = make_tasks(settings.env_name, int(env["n_val"]), seed=seed, split="val", **settings.env_params)
    check_local_gpus(settings.cfg)  # after every input check, before Ray
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    init_ray(settings.cfg)
    memory = create_memory(settings.erl, settings.trainer.memory_actor)
    workers = VerlWorkers(config, settings)
    policy = workers.make_policy(tokenizer)
    trainer = ErlVerlTrainer(settings, tokenizer, workers, policy, memory, train, val, chat_agent_for, make_env,
                             tracker=make_tracker(settings), runner=runner)
    out = Path(settings.cfg["trainer"]["default_local_dir"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", OmegaConf.to_yaml(config, resolve=True))
    return trainer


def run(config: Any) -> dict:
    trainer = build(config)
    resume = trainer.find_resume()
    step = trainer.start_timeline(resume)
    if resume is not None:
        trainer.tracker.truncate_after(step)
    last = trainer.fit()
    last["perf/max_memory_gb"] = trainer.workers.max_memory_gb()
    return last


def _main(config: Any) -> None:
    try:
        last = run(config)
    except (ConfigError, CheckpointError, FileNotFoundError) as exc:
        print(f"erl-verl: error: {exc}", file=sys.stderr)
        sys.exit(2)
    shown = {k: round(float(v), 4) for k, v in last.items()
             if k.startswith(("eval/", "attempt1/success", "attempt2/success", "time/step", "perf/"))}
    print(f"erl-verl: done -> {config.trainer.default_local_dir} {shown}")


def with_searchpath(args: list[str]) -> list[str]:
    """The command line with ERL's search path as the first override: after the options
    (`--config-name X`; argparse takes Hydra's overrides as one run of positionals, so an override
    before an option leaves the rest unparsed) and before the user's overrides, so theirs win."""
    first = next((k for k, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
    return [*args[:first], searchpath(), *args[first:]]


def main() -> None:
    import logging

    import hydra

    from erl.progress import console_logging

    # Hydra configures no logging here (erl_base.yaml: hydra/job_logging none, so it writes no main.log
    # into the folder the run starts in): its console format for other loggers, erl's own lines as erl-train
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    console_logging()
    sys.argv[1:] = with_searchpath(sys.argv[1:])
    hydra.main(config_path=str(config_dir()), config_name="frozenlake_erl", version_base=None)(_main)()


if __name__ == "__main__":
    main()
