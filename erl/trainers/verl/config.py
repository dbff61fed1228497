"""Compose and validate a verl ERL config before anything expensive starts.

Every check here runs on the driver, before Ray: a typo in a key, a bad value, a
missing model or a batch that cannot be split across the GPUs is reported with the
field's name instead of surfacing minutes later from inside a Ray worker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from erl.core.config import ConfigError, ErlConfig, check_bools, check_ints, check_keys
from erl.core.losses import LossSettings
from erl.trainers.verl.loss import loss_settings

ROLLOUT_BACKENDS = ("hf", "vllm", "sglang")
# Top-level sections of verl 0.9.1's ppo_trainer config (pinned in pyproject) plus ERL's: a
# `+typo=1` on the command line is an error, not a silently unused key.
TOP_KEYS = ("actor_rollout_ref", "algorithm", "critic", "custom_reward_function", "data", "distillation", "env",
            "erl", "erl_trainer", "global_profiler", "model_engine", "ray_kwargs", "reward", "reward_model",
            "sandbox_fusion", "skip", "trainer", "transfer_queue")
STATE_FILE = "erl_state.json"  # the data cursor of a verl checkpoint folder; its presence marks an ERL checkpoint


def checkpoint_gap(folder: Path) -> str | None:
    """What an ERL checkpoint folder (global_step_K/) lacks for a resume, or None. verl's
    max_actor_ckpt_to_keep removes an older step's actor/ files but leaves ERL's files beside
    them, and verl's own load would then fail inside a Ray worker."""
    if not (folder / STATE_FILE).is_file():
        return f"is not an ERL checkpoint folder (global_step_K/ with {STATE_FILE})"
    actor = folder / "actor"
    if not actor.is_dir() or not any(p.is_file() for p in actor.iterdir()):
        return ("has no actor/ files: verl removed them when it kept only the newest "
                "trainer.max_actor_ckpt_to_keep checkpoints; resume from a later step, or keep more "
                "(trainer.max_actor_ckpt_to_keep=null keeps all)")
    return None


def config_dir() -> Path:
    """configs/verl at the repository root (editable install) or inside the package."""
    here = Path(__file__).resolve()
    for cand in (here.parents[3] / "configs" / "verl", here.parents[2] / "configs" / "verl"):
        if (cand / "erl_base.yaml").is_file():
            return cand
    raise FileNotFoundError("cannot find configs/verl/erl_base.yaml")


def searchpath() -> str:
    """The Hydra override every verl experiment is composed with: verl's own config folder
    (ppo_trainer and its groups) and configs/local, whose `erl` group erl_base.yaml composes, so
    ERL's settings are declared once for both trainers."""
    return f"hydra.searchpath=[pkg://verl.trainer.config,file://{config_dir().parent / 'local'}]"


def experiments() -> list[str]:
    """Names of the shipped experiment configs (every yaml except the shared base)."""
    return sorted(p.stem for p in config_dir().glob("*.yaml") if p.stem != "erl_base")


def compose(name: str, overrides: list[str] | tuple = ()) -> Any:
    """Hydra-compose `configs/verl/<name>.yaml` with command-line style overrides.

    An unknown key or group raises ConfigError naming it (Hydra's own message).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if name not in experiments():
        raise ConfigError(f"unknown experiment config {name!r}; shipped: {experiments()}")
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            return hydra_compose(config_name=name, overrides=[searchpath(), *overrides])
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"config {name}: {exc}") from exc


@dataclass
class ErlTrainerConfig:
    """The `erl_trainer:` section: what the ERL driver adds to verl's `trainer:`."""

    eval_tasks: int = 128
    eval_temperature: float = 0.0
    memory_actor: str = "erl_reflection_memory"
    max_context_tokens: int = 8192
    seed: int = 0
    metrics_file: str = "metrics.jsonl"
    runner: str | None = None  # "package.module:factory" -> an AttemptRunner (e.g. a LangGraph agent)
    progress: bool = True  # a tqdm bar over the steps (off for logs that should hold only metrics)
    log_episodes: int = 2  # episodes a step written as text to samples.jsonl beside the metrics (0: none)
    # each hf worker runs its share of the episodes on its engine; null: on with the hf rollout
    # (vllm and sglang take each request as it comes already, through verl's servers)
    collect_in_workers: bool | None = None

    @classmethod
    def from_dict(cls, data: Any) -> ErlTrainerConfig:
        out = cls(**check_keys("erl_trainer", data, cls))
        check_ints("erl_trainer", out, ("eval_tasks", "max_context_tokens"), 1)
        check_ints("erl_trainer", out, ("log_episodes",), 0)
        check_bools("erl_trainer", out, ("progress",))
        if out.collect_in_workers is not None:  # null: resolved against the rollout backend (validate)
            check_bools("erl_trainer", out, ("collect_in_workers",))
        if not out.memory_actor or not isinstance(out.memory_actor, str):
            raise ConfigError("erl_trainer.memory_actor must be a non-empty actor name")
        if isinstance(out.seed, bool) or not isinstance(out.seed, int) or out.seed < 0:
            raise ConfigError(f"erl_trainer.seed must be an integer >= 0, got {out.seed!r}")
        t = out.eval_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float("inf"):
            raise ConfigError(f"erl_trainer.eval_temperature must be a finite number >= 0, got {t!r}")
        return out


@dataclass
class Settings:
    """What the driver needs, checked: the plain config plus typed sections."""

    cfg: dict
    erl: ErlConfig
    trainer: ErlTrainerConfig
    env_name: str
    env_params: dict
    model_path: str
    world_size: int
    backend: str
    loss: LossSettings  # what the workers' loss reads (erl.trainers.verl.loss)

    @property
    def tasks_per_step(self) -> int:
        return int(self.cfg["data"]["train_batch_size"])

    @property
    def total_steps(self) -> int:
        return int(self.cfg["trainer"]["total_training_steps"])


def _int(section: dict, key: str, path: str, low: int = 1) -> int:
    v = section.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{path}.{key} must be an integer >= {low}, got {v!r}")
    return v


def check_model(path: str, field: str = "actor_rollout_ref.model.path") -> str:
    """A local Hugging Face folder whose tokenizer has a chat template (ERL renders chats)."""
    local = Path(str(path)).expanduser()
    if not local.is_dir():
        raise ConfigError(f"{field}: model folder {str(path)!r} does not exist "
                          "(give a local Hugging Face folder, e.g. /models/Qwen3-4B-Instruct-2507)")
    if not (local / "config.json").is_file():
        raise ConfigError(f"{field}: {str(local)!r} has no config.json; not a Hugging Face model folder")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(local))
    except Exception as exc:  # tokenizers raise many kinds; the user needs the folder and cause
        raise ConfigError(f"{field}: cannot load a tokenizer from {str(local)!r}: {exc}") from exc
    if not getattr(tok, "chat_template", None):
        raise ConfigError(f"{field}: the tokenizer in {str(local)!r} has no chat template; "
                          "ERL renders multi-turn chats and needs one (set tokenizer_config.json's chat_template)")
    return str(local)


def validate(cfg: Any, check_model_files: bool = True) -> Settings:
    """All pre-Ray checks; returns the settings or raises ConfigError naming the field."""
    from omegaconf import DictConfig, OmegaConf

    from erl.envs.registry import check_env_section

    if isinstance(cfg, DictConfig):
        try:
            plain = OmegaConf.to_container(cfg, resolve=True)
        except Exception as exc:  # an interpolation to a missing key, a ??? value
            raise ConfigError(f"config does not resolve: {exc}") from exc
    else:
        plain = dict(cfg)
    plain.pop("hydra", None)
    for section in ("erl", "env", "erl_trainer", "data", "trainer", "actor_rollout_ref"):
        if not isinstance(plain.get(section), dict):
            raise ConfigError(f"config has no `{section}:` section")
    check_keys("config", plain, TOP_KEYS)
    erl = ErlConfig.from_dict(plain["erl"])
    trainer = ErlTrainerConfig.from_dict(plain["erl_trainer"])

    env = plain["env"]
    _, params = check_env_section(env, erl.max_turns)

    arr = plain["actor_rollout_ref"]
    rollout, actor = arr["rollout"], arr["actor"]
    backend = rollout.get("name")
    if backend not in ROLLOUT_BACKENDS:
        raise ConfigError(f"actor_rollout_ref.rollout.name must be one of {ROLLOUT_BACKENDS}, got {backend!r}")
    n = rollout.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"actor_rollout_ref.rollout.n must be an integer >= 1, got {n!r}")
    if n != erl.n_attempt:
        raise ConfigError(f"actor_rollout_ref.rollout.n ({n}) must equal erl.n_attempt ({erl.n_attempt}): "
                          "set erl.n_attempt, the rollout count follows it")
    if backend == "hf" and rollout.get("tensor_model_parallel_size", 1) != 1:
        raise ConfigError("actor_rollout_ref.rollout.tensor_model_parallel_size must be 1 with the hf backend "
                          "(each GPU holds a whole copy of the policy for generation)")
    if trainer.collect_in_workers is None:
        trainer = replace(trainer, collect_in_workers=backend == "hf")
    elif trainer.collect_in_workers and backend != "hf":
        raise ConfigError(f"erl_trainer.collect_in_workers needs actor_rollout_ref.rollout.name=hf (got {backend!r}): "
                          "vllm and sglang already take each request as it comes, through verl's servers")
    model = arr.get("model") or {}
    if backend == "hf" and (model.get("lora_rank") or 0) > 0 and not (model.get("lora") or {}).get("merge"):
        raise ConfigError("actor_rollout_ref.model.lora.merge must be true with lora_rank > 0 and the hf backend: "
                          "its generation copy takes full weights (W + BA), not adapters")

    tr = plain["trainer"]
    nnodes = _int(tr, "nnodes", "trainer")
    gpus = _int(tr, "n_gpus_per_node", "trainer")
    _int(tr, "total_training_steps", "trainer")
    world = nnodes * gpus
    tasks = _int(plain["data"], "train_batch_size", "data")
    if tasks % world:
        raise ConfigError(f"data.train_batch_size ({tasks} tasks) must be divisible by the number of GPUs "
                          f"(trainer.nnodes x trainer.n_gpus_per_node = {nnodes} x {gpus} = {world}) "
                          "so that every GPU gets the same share of each step")
    tp = rollout.get("tensor_model_parallel_size", 1) or 1
    if world % tp:
        raise ConfigError(f"actor_rollout_ref.rollout.tensor_model_parallel_size ({tp}) must divide the "
                          f"number of GPUs ({world})")
    _int(actor, "ppo_epochs", "actor_rollout_ref.actor")
    loss = loss_settings(plain, erl)  # every loss-deciding key (the HONOURED / NEUTRAL tables) or ConfigError
    tr = plain["trainer"]
    if tr.get("resume_mode", "auto") not in ("auto", "disable", "resume_path"):
        raise ConfigError(f"trainer.resume_mode must be auto, disable or resume_path, got {tr.get('resume_mode')!r}")
    if tr.get("resume_mode") == "resume_path" and check_model_files:
        ckpt = Path(str(tr.get("resume_from_path"))).expanduser()
        gap = checkpoint_gap(ckpt)  # checked again by the trainer; here before Ray starts
        if gap:
            raise ConfigError(f"trainer.resume_from_path={tr.get('resume_from_path')!r} {gap}")
        from erl.trainers.verl.memory import MEMORY_FILE, read_memory_state

        if (ckpt / MEMORY_FILE).is_file():
            read_memory_state(ckpt / MEMORY_FILE)
    if check_model_files:
        from erl.trainers.paths import check_writable

        check_writable(str(tr.get("default_local_dir")), "trainer.default_local_dir")
    model_path = str(arr["model"]["path"])
    if check_model_files:
        model_path = check_model(model_path)
    return Settings(cfg=plain, erl=erl, trainer=trainer, env_name=env["name"], env_params=params,
                    model_path=model_path, world_size=world, backend=backend, loss=loss)
