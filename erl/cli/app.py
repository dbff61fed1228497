"""What `erl-train` and `erl-eval` share around Hydra: the config folder, one clear message for
an unknown key (with the closest known keys), and the console progress lines.

Hydra refuses `trainer.stepz=3` with "use +trainer.stepz=3", and only with the `+` does the
run reach our own check that names the known keys: two runs to learn one typo. So before
Hydra starts, every `key=value` override is looked up in the composed config (with the
group choices of the same command line) and an unknown key ends the program at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

# keys that are not a typo of ours but a different program
OTHER_APPS = {"verl": "verl experiments (configs/verl/) run with `erl-verl`, e.g. erl-verl --config-name "
                      "frozenlake_erl; erl-train is the local trainer"}


def config_dir() -> Path:
    """configs/local/ (erl-train, erl-eval) at the repository root, or shipped inside the package.
    configs/verl/ sits beside it, not in it, so its experiments are no group of erl-train."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "configs" / "local", here.parents[1] / "configs" / "local"):
        if (cand / "train.yaml").is_file():
            return cand
    raise FileNotFoundError("cannot find the configs/local/ directory with train.yaml")


def input_errors() -> tuple[type, ...]:
    """What ends a CLI with its message and exit code 2 (a bad config, checkpoint or path), not a
    traceback: erl-train's and erl-eval's call_with_config, erl-compare."""
    from erl.core.config import ConfigError
    from erl.trainers.local.checkpoint import CheckpointError

    return ConfigError, CheckpointError, FileNotFoundError


def compose(overrides: list[str], config_name: str = "train") -> dict:
    """erl-train's config (or `config_name`'s) under `overrides`, resolved to a plain dict, outside a
    Hydra app (erl-compare runs several; erl-tasks reads its env section)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = hydra_compose(config_name, overrides=overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    return plain


def _flat_keys(node, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, dict):
            out += _flat_keys(v, key + ".")
    return out


def unknown_override_error(config_name: str, overrides: list[str]) -> str | None:
    """The message for the first `key=value` override whose key the composed config lacks, or
    None. Syntax errors, bad group choices and `+`/`~` overrides are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import OmegaConf

    from erl.core.config import closest_keys

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - Hydra reports its own syntax errors, better than we could
        return None
    folder = config_dir()
    groups = {p.name for p in folder.iterdir() if p.is_dir()}
    choices = [o.input_line for o in parsed if o.key_or_group in groups and not o.is_hydra_override()]
    keys = [o.key_or_group for o in parsed if o.type == OverrideType.CHANGE and not o.is_hydra_override()
            and o.key_or_group not in groups and o.package is None]
    if not keys:
        return None
    try:
        with initialize_config_dir(config_dir=str(folder), version_base=None):
            cfg = compose(config_name, overrides=choices)
    except Exception:  # noqa: BLE001 - a bad group choice: Hydra's own message lists the options
        return None
    plain = OmegaConf.to_container(cfg, resolve=False)
    known = _flat_keys(plain)
    for key in keys:
        if key in known:
            continue
        parent = key.rpartition(".")[0]
        msg = f"unknown config key {key!r}"
        if key in OTHER_APPS:
            return f"{msg}: {OTHER_APPS[key]}"
        close = closest_keys(key, known)
        if close:
            msg += f"; did you mean {' or '.join(close)}?"
        elif parent in known and OmegaConf.select(cfg, parent) == {}:
            msg += f"; {parent} is empty: add keys to it with a leading +, e.g. +{key}=..."
        else:
            top = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent)
            msg += f"; the keys {'under ' + parent if parent else 'at the top'} are: {', '.join(top)}"
        return msg
    return None


def hydra_app(prog: str, config_name: str, task) -> None:
    """Run `task(cfg)` as the Hydra app `config_name`, after the unknown-key check."""
    import hydra
    from hydra._internal.utils import get_args_parser

    from erl.progress import console_logging

    args, _ = get_args_parser().parse_known_args(sys.argv[1:])
    if not (args.help or args.hydra_help or args.config_name or args.config_dir or args.info):
        error = unknown_override_error(config_name, list(args.overrides))
        if error:
            print(f"{prog}: error: {error}\n(every key and its value: {prog} --cfg job)", file=sys.stderr)
            sys.exit(2)
    console_logging()
    hydra.main(config_path=str(config_dir()), config_name=config_name, version_base=None)(task)()
