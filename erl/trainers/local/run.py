"""Build a LocalTrainer from a config and run it: output dir, resume, eval, checkpoints, plots.

Everything that can be wrong with the config, the model or the output directory is
checked before the first rollout, and nothing in an existing run directory is written
over unless the run resumes it.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from time import monotonic
from typing import Any

import torch

from erl.core.config import ConfigError, ErlConfig, check_bools, check_keys
from erl.envs.registry import check_env_section, make_env, make_tasks
from erl.fileio import atomic_write
from erl.memory import ReflectionMemory
from erl.models.tiny import check_tiny_sizes
from erl.progress import RunLog, log, run_log
from erl.tracking import Tracker
from erl.trainers import driver
from erl.trainers.local.checkpoint import (
    checkpoints_after,
    config_mismatch,
    list_checkpoints,
    load_checkpoint,
    remove_leftovers,
)
from erl.trainers.local.config import LocalTrainerConfig
from erl.trainers.local.trainer import LocalTrainer
from erl.trainers.paths import check_writable
from erl.workflow.factories import chat_agent_for, load_runner


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but no CUDA device is available")
    return torch.device(name)


LORA_KEYS = {"enabled", "r", "alpha", "dropout", "target_modules", "last_layers"}
# What erl-train and erl-eval read: a `+typo=1` is an error, not a silently unused key.
TOP_KEYS = {"erl", "trainer", "env", "model", "seed", "runner", "resume", "eval"}
MODEL_KEYS = {"path", "fetch", "lora", "tiny", "init_from"}  # init_from: a warm start (erl-early)


def check_int(value: Any, key: str, low: int) -> int:
    """An integer >= low (Hydra passes `seed=abc` through as the string 'abc')."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


def apply_lora(model, lora: dict):
    """peft LoRA adapters. `last_layers: K` puts them on the top K blocks only: the frozen
    blocks below need no backward pass at all, which nearly halves a CPU update."""
    from peft import LoraConfig, get_peft_model

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


def check_model_section(model_cfg: dict) -> None:
    """The `model:` section's keys and its switches: `lora.enabled=no` reaches us from Hydra as the
    string "no", which is true, and had turned LoRA on."""
    check_keys("model", model_cfg, MODEL_KEYS)
    lora = model_cfg.get("lora") or {}
    if not isinstance(lora, dict):
        raise ConfigError(f"model.lora must be a mapping of {sorted(LORA_KEYS)}, got {lora!r}")
    check_keys("model.lora", lora, LORA_KEYS)
    check_bools("model", model_cfg, ("fetch",))
    check_bools("model.lora", lora, ("enabled",))


def load_policy_model(model_cfg: dict, device: torch.device, seed: int):
    """`model.path`: a registry name, a local Hugging Face folder, or `tiny` (a random
    model the project builds, for tests and smoke runs). The section is checked by the caller,
    with its other settings before any work (check_model_section)."""
    path = str(model_cfg.get("path", ""))
    if path == "tiny":
        from erl.models.tiny import build_tiny_model, build_tiny_tokenizer

        tok = build_tiny_tokenizer()
        model = build_tiny_model(tok, seed=seed, **check_tiny_sizes(model_cfg.get("tiny")))
    else:
        from erl.models.registry import load_model_and_tokenizer, resolve_model

        folder = resolve_model(path, fetch=bool(model_cfg.get("fetch", True)))
        log.info("model %s: loading %s", path, folder)
        model, tok = load_model_and_tokenizer(folder, dtype=torch.float32, device="cpu")
    if model_cfg.get("init_from"):  # warm start from an Early Experience stage (erl/models/warmstart.py)
        from erl.models.warmstart import load_init

        load_init(model, model_cfg["init_from"])
    lora = dict(model_cfg.get("lora", {}) or {})
    if lora.get("enabled", False):
        # The adapters' random init from the seed alone: a first run converts the registry model in
        # this process, which draws from the global generator, and had started from other adapters
        # than every later run (the README command's first update: grad norm 0.0280 against 0.0258).
        torch.manual_seed(seed)
        model = apply_lora(model, lora)
    return model.to(device), tok


def build(cfg: dict) -> tuple[LocalTrainer, dict]:
    """Validate every section, then build. Returns the trainer and the validation tasks."""
    for section in ("erl", "trainer", "env", "model"):
        if not isinstance(cfg.get(section), dict):
            raise ConfigError(f"config has no `{section}:` section")
    check_keys("config", cfg, TOP_KEYS)
    check_model_section(cfg["model"])
    if cfg["model"].get("path") == "tiny":  # checked with the config, not after the tasks are made
        check_tiny_sizes(cfg["model"].get("tiny"))
    erl = ErlConfig.from_dict(cfg["erl"])
    tcfg = LocalTrainerConfig.from_dict(cfg["trainer"])
    env_name, params = check_env_section(cfg["env"], erl.max_turns)
    seed = check_int(cfg.get("seed", 0), "seed", 0)
    n_train, n_val = int(cfg["env"].get("n_train", 256)), int(cfg["env"].get("n_val", 64))  # checked above
    train = make_tasks(env_name, n_train, seed=seed, split="train", **params)
    val = make_tasks(env_name, n_val, seed=seed, split="val", **params)[: tcfg.eval_tasks]
    device = pick_device(tcfg.device)
    if tcfg.engine_cuda_kernels and device.type != "cuda":  # before the model loads
        raise ConfigError(f"trainer.{tcfg.engine_cuda_kernels[0]} needs a CUDA device (this run's: {device.type})")
    torch.manual_seed(seed)
    model, tok = load_policy_model(dict(cfg["model"]), device, seed)
    ref = None
    if tcfg.loss(erl).uses_kl:
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    memory = ReflectionMemory(max_size=erl.memory_size, top_k=erl.memory_top_k)
    runner = load_runner(cfg.get("runner"))
    trainer = LocalTrainer(model, tok, train, erl, tcfg, chat_agent_for, make_env, memory=memory,
                           seed=seed, ref_model=ref, runner=runner, val_tasks=val)
    trainer.checkpoint_config = cfg
    return trainer, {"val": val}


def prepare_output(cfg: dict, out: Path, resume: Any, prog: str = "erl-train") -> dict | None:
    """The checkpoint to resume from (loaded), or None to start at step 0. Refuse to mix runs."""
    ckpts = list_checkpoints(out / "checkpoints")
    held = bool(ckpts) or (out / "metrics.jsonl").exists()
    if resume in (None, False, "false", "False", ""):
        if held:
            hint = " (it has no checkpoint yet, so it restarts from step 0)" if not ckpts else ""
            raise ConfigError(f"{out} already holds a run; pass resume=true to continue it{hint}, "
                              "or choose another trainer.output_dir")
        return None
    if resume in (True, "true", "True") and not ckpts:
        # killed before its first checkpoint: nothing was saved, so the same run restarts from step 0
        started = out / "config.json"
        diff = config_mismatch(json.loads(started.read_text()), cfg) if started.is_file() else []
        if diff:
            raise ConfigError(f"{out} holds a run started with a different config: " + "; ".join(diff))
        if started.is_file():
            print(f"{prog}: resume=true but {out / 'checkpoints'} holds no complete checkpoint: "
                  "restarting from step 0", file=sys.stderr)
        else:  # scripts pass resume=true on every call, the first one included
            print(f"{prog}: resume=true, nothing to resume in {out}: a new run", file=sys.stderr)
        return None
    path = ckpts[-1] if resume in (True, "true", "True") else Path(str(resume))
    ckpt = load_checkpoint(path)
    diff = config_mismatch(ckpt["config"], cfg)
    if diff:
        raise ConfigError(f"checkpoint {path} was written with a different config: " + "; ".join(diff))
    return ckpt


def start_timeline(out: Path, step: int) -> Path | None:
    """The resume protocol (erl.trainers.driver.start_timeline) on `out/checkpoints/step_K`,
    after removing the folders a crash left half-written or half-deleted."""
    root = out / "checkpoints"
    remove_leftovers(root)
    return driver.start_timeline(out, step, checkpoints_after(root, step), out / "metrics.jsonl")


def train(cfg: dict) -> dict[str, float]:
    """Run training from a plain dict config (the Hydra app passes its resolved config). What it
    is doing goes to the `erl` logger, and into <output_dir>/train.log once the checks pass."""
    with run_log() as runlog:
        return _train(cfg, runlog)


def _train(cfg: dict, runlog: RunLog) -> dict[str, float]:
    started = monotonic()  # the time budget counts model loading and evals too
    tcfg = LocalTrainerConfig.from_dict(cfg["trainer"])
    out = Path(tcfg.output_dir)
    check_writable(out, "trainer.output_dir")
    resuming = cfg.get("resume", False) not in (None, False, "false", "False", "")
    ckpt = prepare_output(cfg, out, cfg.get("resume", False))
    trainer, _ = build(cfg)
    start = -1  # the last step already done: none, or the checkpoint's
    if ckpt is not None:
        trainer.load_state(ckpt)
        start = trainer.step_count
        del ckpt
    out.mkdir(parents=True, exist_ok=True)
    runlog.open(out / "train.log")
    start_timeline(out, start)
    atomic_write(out / "config.json", json.dumps(cfg, indent=1, default=str))
    title = f"{cfg['env'].get('name')} | {trainer.erl.mode} | {cfg['model'].get('path')}"
    trainer.tracker = Tracker(out, tcfg.loggers, config=cfg, project=tcfg.project,
                              purge_step=start + 1 if resuming else None, title=title)
    if resuming:
        trainer.tracker.truncate_after(start)
    log.info("run %s: %s, %d steps of %d tasks x %d, eval on %d tasks%s", out, title, tcfg.total_steps,
             tcfg.tasks_per_step, trainer.erl.first_attempts_per_task, len(trainer.val_tasks),
             f" (resumed at step {trainer.step_count})" if start >= 0 else "")
    last = trainer.fit(started)
    trainer.tracker.close()
    ckpts = list_checkpoints(out / "checkpoints")
    log.info("%s in %.1f min: metrics, curves.png and train.log in %s; last checkpoint %s",
             "done" if trainer.step_count >= tcfg.total_steps else f"stopped at step {trainer.step_count}",
             (monotonic() - started) / 60, out, ckpts[-1] if ckpts else "none")
    return {**last, "train/last_step": float(trainer.step_count)}
