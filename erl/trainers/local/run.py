"""Build a LocalTrainer from a config and run it: output dir, resume, eval, checkpoints, plots.

Everything that can be wrong with the config, the model or the output directory is
checked before the first rollout, and nothing in an existing run directory is written
over unless the run resumes it.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from erl.core.config import ConfigError, ErlConfig, check_keys
from erl.envs.registry import make_env, make_tasks, validate_env_params
from erl.memory import ReflectionMemory
from erl.progress import RunLog, bar_postfix, log, run_log, step_summary
from erl.tracking import Tracker, plot_run
from erl.trainers.local.checkpoint import (
    CheckpointError,
    config_mismatch,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from erl.trainers.local.config import LocalTrainerConfig
from erl.trainers.local.trainer import LocalTrainer
from erl.workflow.factories import chat_agent_for, load_runner


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but no CUDA device is available")
    return torch.device(name)


LORA_KEYS = {"enabled", "r", "alpha", "dropout", "target_modules", "last_layers"}


def apply_lora(model, lora: dict):
    """peft LoRA adapters. `last_layers: K` puts them on the top K blocks only: the frozen
    blocks below need no backward pass at all, which nearly halves a CPU update."""
    from peft import LoraConfig, get_peft_model

    check_keys("model.lora", lora, LORA_KEYS)
    layers = None
    if lora.get("last_layers") is not None:
        n, k = int(model.config.num_hidden_layers), int(lora["last_layers"])
        if not 1 <= k <= n:
            raise ConfigError(f"model.lora.last_layers must be in 1..{n}, got {k}")
        layers = list(range(n - k, n))
    return get_peft_model(model, LoraConfig(
        r=int(lora.get("r", 16)), lora_alpha=int(lora.get("alpha", 32)), lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=list(lora.get("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"])),
        layers_to_transform=layers))


def load_policy_model(model_cfg: dict, device: torch.device, seed: int):
    """`model.path`: a registry name, a local Hugging Face folder, or `tiny` (a random
    model the project builds, for tests and smoke runs)."""
    path = str(model_cfg.get("path", ""))
    if path == "tiny":
        from erl.models.tiny import build_tiny_model, build_tiny_tokenizer

        tok = build_tiny_tokenizer()
        model = build_tiny_model(tok, seed=seed, **dict(model_cfg.get("tiny", {}) or {}))
    else:
        from erl.models.registry import load_model_and_tokenizer, resolve_model

        folder = resolve_model(path, fetch=bool(model_cfg.get("fetch", True)))
        log.info("model %s: loading %s", path, folder)
        model, tok = load_model_and_tokenizer(folder, dtype=torch.float32, device="cpu")
    lora = dict(model_cfg.get("lora", {}) or {})
    if lora.get("enabled", False):
        model = apply_lora(model, lora)
    return model.to(device), tok


def build(cfg: dict) -> tuple[LocalTrainer, dict]:
    """Validate every section, then build. Returns the trainer and the validation tasks."""
    for section in ("erl", "trainer", "env", "model"):
        if section not in cfg:
            raise ConfigError(f"config has no `{section}:` section")
    erl = ErlConfig.from_dict(cfg["erl"])
    tcfg = LocalTrainerConfig.from_dict(cfg["trainer"])
    env_cfg = dict(cfg["env"])
    env_name = env_cfg.get("name")
    params = dict(env_cfg.get("params", {}) or {})
    validate_env_params(env_name, params)
    env_turns = params.get("max_turns")
    if isinstance(env_turns, int) and erl.max_turns < env_turns:
        raise ConfigError(f"erl.max_turns ({erl.max_turns}) < env.params.max_turns ({env_turns}): attempts would "
                          "be cut before the environment ends them; make them equal")
    seed = int(cfg.get("seed", 0))
    n_train, n_val = int(env_cfg.get("n_train", 256)), int(env_cfg.get("n_val", 64))
    if n_train < 1 or n_val < 1:
        raise ConfigError(f"env.n_train and env.n_val must be >= 1, got {n_train}, {n_val}")
    train = make_tasks(env_name, n_train, seed=seed, split="train", **params)
    val = make_tasks(env_name, n_val, seed=seed, split="val", **params)[: tcfg.eval_tasks]
    device = pick_device(tcfg.device)
    torch.manual_seed(seed)
    model, tok = load_policy_model(dict(cfg["model"]), device, seed)
    ref = None
    if tcfg.kl_coef > 0:
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    memory = ReflectionMemory(max_size=erl.memory_size, top_k=erl.memory_top_k)
    runner = load_runner(cfg.get("runner"))
    trainer = LocalTrainer(model, tok, train, erl, tcfg, chat_agent_for, make_env, memory=memory,
                           seed=seed, ref_model=ref, runner=runner)
    return trainer, {"val": val}


def prepare_output(cfg: dict, out: Path, resume: Any) -> Path | None:
    """Return the checkpoint to resume from, or None for a fresh run. Refuse to mix runs."""
    ckpts = list_checkpoints(out / "checkpoints")
    if resume in (None, False, "false", "False", ""):
        if ckpts or (out / "metrics.jsonl").exists():
            raise ConfigError(f"{out} already holds a run; pass resume=true to continue it, "
                              "or choose another trainer.output_dir")
        return None
    path = Path(str(resume)) if resume not in (True, "true", "True") else (ckpts[-1] if ckpts else None)
    if path is None:
        raise CheckpointError(f"resume=true but {out / 'checkpoints'} has no complete checkpoint")
    saved = load_checkpoint(path)["config"]
    diff = config_mismatch(saved, cfg)
    if diff:
        raise ConfigError(f"checkpoint {path} was written with a different config:\n  " + "\n  ".join(diff))
    return path


def train(cfg: dict) -> dict[str, float]:
    """Run training from a plain dict config (the Hydra app passes its resolved config). What it
    is doing goes to the `erl` logger, and into <output_dir>/train.log once the checks pass."""
    with run_log() as runlog:
        return _train(cfg, runlog)


def _train(cfg: dict, runlog: RunLog) -> dict[str, float]:
    started = time.perf_counter()
    tcfg = LocalTrainerConfig.from_dict(cfg["trainer"])
    out = Path(tcfg.output_dir)
    resume_from = prepare_output(cfg, out, cfg.get("resume", False))
    trainer, extra = build(cfg)
    out.mkdir(parents=True, exist_ok=True)
    runlog.open(out / "train.log")
    (out / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
    tracker = Tracker(out, tcfg.loggers, config=cfg, project=tcfg.project)
    if resume_from is not None:
        trainer.load_state(load_checkpoint(resume_from))
        tracker.truncate_after(trainer.step_count)
    title = f"{cfg['env'].get('name')} | {trainer.erl.mode} | {cfg['model'].get('path')}"
    last: dict[str, float] = {}

    def checkpoint() -> None:
        save_checkpoint(out / "checkpoints", trainer.step_count, model_state=trainer.trainable_state(),
                        optimizer=trainer.optimizer, scheduler=trainer.scheduler,
                        trainer_state=trainer.trainer_state(),
                        memory_state=trainer.memory.state_dict() if trainer.memory is not None else None,
                        config=cfg, keep=tcfg.keep_checkpoints)

    log.info("run %s: %s, %d steps of %d tasks x %d, eval on %d tasks%s", out, title, tcfg.total_steps,
             tcfg.tasks_per_step, trainer.erl.first_attempts_per_task, len(extra["val"]),
             f" (resumed at step {trainer.step_count})" if resume_from is not None else "")
    if trainer.step_count == 0:
        log.info("step 0: eval before training on %d tasks", len(extra["val"]))
        last = trainer.evaluate(extra["val"])
        tracker.log(0, last)
        log.info(step_summary(0, tcfg.total_steps, last))
    bar = tqdm(total=tcfg.total_steps, initial=trainer.step_count, disable=not tcfg.progress, desc="erl",
               unit="step", file=sys.stderr)
    while trainer.step_count < tcfg.total_steps:
        metrics = trainer.step()
        k = trainer.step_count
        if (tcfg.eval_every and k % tcfg.eval_every == 0) or k == tcfg.total_steps:
            metrics.update(trainer.evaluate(extra["val"]))
        tracker.log(k, metrics)
        log.info(step_summary(k, tcfg.total_steps, metrics))
        last = metrics
        if (tcfg.save_every and k % tcfg.save_every == 0) or k == tcfg.total_steps:
            checkpoint()
        plot_run(out / "metrics.jsonl", out / "curves.png", title=title)
        bar.update(1)
        bar.set_postfix(bar_postfix(metrics))
    bar.close()
    tracker.close()
    plot_run(out / "metrics.jsonl", out / "curves.png", title=title)
    ckpts = list_checkpoints(out / "checkpoints")
    log.info("done in %.1f min: metrics, curves.png and train.log in %s; last checkpoint %s",
             (time.perf_counter() - started) / 60, out, ckpts[-1] if ckpts else "none")
    return last
