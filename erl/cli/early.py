"""`erl-early`: Early Experience warm starts (docs/early_experience.md).

    erl-early build [overrides]    dataset: expert.jsonl, rollout.jsonl, iwm.jsonl, sr.jsonl  (configs/early/build.yaml)
    erl-early train [overrides]    one stage, stage=il|iwm|sr, on the local trainer           (configs/early/train.yaml)
    erl-early export [overrides]   a stage's records as parquet for verl's SFT trainer        (configs/early/export.yaml)
    erl-early show DIR [--kind K] [--n N]   print records of a dataset folder

Overrides are Hydra's, as in erl-train: `env=sokoban model=tiny early.k=2 trainer.epochs=3`.
A stage's output starts RL: `erl-train model.init_from=<trainer.output_dir of the stage>`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from erl.cli.train import call_with_config, config_dir

USAGE = __doc__


def compose(name: str, overrides: list[str]):
    """configs/early/<name>.yaml, with configs/local/ (erl-train's groups) on the search path for
    the env/model/erl groups."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    local = config_dir()
    with initialize_config_dir(config_dir=str(local.parent / "early"), version_base=None):
        return hydra_compose(config_name=name, overrides=[f"hydra.searchpath=[file://{local}]", *overrides])


def as_config_error(fn):
    """Bad tasks or records (an expert action the env rejects, say) end the program with their
    message and exit code 2, like a bad config, not with a traceback."""
    from erl.core.config import ConfigError

    def run(cfg: dict):
        try:
            return fn(cfg)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    return run


def export(cfg: dict) -> Path:
    from erl.early.data import export_parquet, stage_records
    from erl.early.train import check_stage

    stage = check_stage(cfg["stage"])
    return export_parquet(stage_records(cfg["data"], stage["files"]), cfg["out"])


def show(argv: list[str]) -> int:
    from erl.early.data import KIND_FILES, read_records

    ap = argparse.ArgumentParser(prog="erl-early show")
    ap.add_argument("data")
    ap.add_argument("--kind", default="rollout", choices=sorted(KIND_FILES))
    ap.add_argument("--n", type=int, default=2)
    args = ap.parse_args(argv)
    manifest = Path(args.data) / "manifest.json"
    if manifest.is_file():
        print("counts:", json.dumps(json.loads(manifest.read_text()).get("counts", {})))
    for row in read_records(Path(args.data) / KIND_FILES[args.kind])[: args.n]:
        print("-" * 60)
        for key, value in row.items():
            if key == "messages":
                for m in value:
                    print(f"[{m['role']}]\n{m['content']}")
            else:
                print(f"{key}: {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("build", "train", "export", "show"):
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "show":
        return show(rest)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(command, rest)
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"erl-early {command}: error: {exc}", file=sys.stderr)
        return 2
    if command == "build":
        from erl.early.build import build

        _, manifest = call_with_config("erl-early build", as_config_error(build), cfg)
        print(f"erl-early build: done -> {cfg.out}  {json.dumps(manifest['counts'])}")
    elif command == "train":
        from erl.early.train import train

        plain, last = call_with_config("erl-early train", as_config_error(train), cfg)
        print(f"erl-early train: done -> {plain['trainer']['output_dir']}/final  "
              f"nll {last.get('loss/nll', float('nan')):.4f}")
    else:
        _, path = call_with_config("erl-early export", as_config_error(export), cfg)
        print(f"erl-early export: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
