"""GGUF file -> an ordinary Hugging Face folder (config, safetensors, tokenizer, chat template).

transformers reads GGUF (dequantising every tensor on load) but refuses to `save_pretrained` a
model loaded that way, and dequantising costs ~15 s on 2 CPU cores each time. So we do it once:
rebuild the architecture from the GGUF's config with no quantisation attached, copy the
dequantised weights in, and save. The folder is written next to its destination under a
temporary name, verified by loading it back, and only then renamed into place, so a crash or a
bad file never leaves a half-written model where `resolve_model` would find it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

META_FILE = "erl_model.json"
_PROBE_MESSAGES = [{"role": "user", "content": "What is 2 + 2? Reply with <answer>4</answer>."}]


class ModelConversionError(RuntimeError):
    """The GGUF cannot become a usable chat model folder (the message says why)."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def as_dtype(dtype: Any) -> Any:
    """torch.float32 or "float32" / "bfloat16" / "float16" -> a torch dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype (float32, bfloat16, float16), got {dtype!r}")
    return value


def _patch_json(path: Path, updates: dict, drop: tuple[str, ...] = ()) -> None:
    data = json.loads(path.read_text())
    data.update(updates)
    for key in drop:
        data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


_SPECIAL_KEYS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                 "pad_token": "padding_token_id"}


def gguf_special_ids(gguf: Path) -> dict[str, int]:
    """The special token ids the GGUF itself declares (tokenizer.ggml.*_token_id)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    ids = {}
    for attr, key in _SPECIAL_KEYS.items():
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None and field.data:
            ids[attr] = int(field.parts[field.data[0]][0])
    return ids


def align_special_tokens(tok: Any, model: Any, ids: dict[str, int]) -> dict[str, str]:
    """Make tokenizer, config and generation config use the GGUF's declared special tokens.

    Needed because transformers versions disagree: 5.17 maps SmolLM2's GGUF to eos=<|im_start|>
    and no pad, 5.24 to eos=pad=<|im_end|> (what the file says). Returns what was changed."""
    changed = {}
    for attr, token_id in ids.items():
        if not 0 <= token_id < len(tok):
            continue
        token = tok.convert_ids_to_tokens(token_id)
        if getattr(tok, attr) != token:
            changed[attr] = f"{getattr(tok, attr)} -> {token}"
            setattr(tok, attr, token)
        if attr == "unk_token":  # configs carry no unk id that generation uses
            continue
        id_attr = f"{attr}_id"
        for cfg in (model.config, model.generation_config):
            if getattr(cfg, id_attr, None) != token_id:
                setattr(cfg, id_attr, token_id)
                changed[f"{type(cfg).__name__}.{id_attr}"] = str(token_id)
    return changed


def _load_gguf(gguf: Path, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    except Exception as exc:  # a truncated or foreign file fails in many ways; all mean "unusable"
        raise ModelConversionError(f"transformers cannot read {gguf}: {type(exc).__name__}: {exc}") from exc
    if not tok.chat_template:
        # ERL renders every prompt through the model's own template; a guessed one would
        # silently change what the model sees, so refuse instead.
        raise ModelConversionError(f"{gguf.name} carries no chat template (tokenizer.chat_template); "
                                   "only chat/instruct models can be used")
    return src, tok


def _rebuild(src: Any, dtype: Any) -> Any:
    """A plain (unquantised) copy of `src` that `save_pretrained` accepts."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(src.config)
    for attr in ("quantization_config", "_model_name_or_path"):  # GGUF bookkeeping, not architecture
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(src.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(src.generation_config)
    return model


def _save(model: Any, tok: Any, folder: Path) -> None:
    model.save_pretrained(str(folder), safe_serialization=True)
    # The GGUF has no max length; without one the tokenizer reports 1e30.
    tok.model_max_length = int(getattr(model.config, "max_position_embeddings", 0) or tok.model_max_length)
    tok.save_pretrained(str(folder))
    # transformers 5 writes rope_theta only inside rope_parameters and names the tokenizer class
    # TokenizersBackend; transformers 4.x would read rope_theta=10000 and fail on the class name.
    # Both spellings below load identically on 5.x (checked in _verify).
    rope = getattr(model.config, "rope_parameters", None) or {}
    if "rope_theta" in rope:
        _patch_json(folder / "config.json", {"rope_theta": rope["rope_theta"]})
    # clean_up_tokenization_spaces would strip spaces before punctuation on decode (and 5.17 warns)
    _patch_json(folder / "tokenizer_config.json",
                {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False},
                drop=("is_local", "local_files_only"))


def _verify(folder: Path, model: Any, tok: Any, dtype: Any) -> None:
    """Load the written folder back: same tensors bit for bit, same chat rendering and token ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok2 = AutoTokenizer.from_pretrained(str(folder))
        model2 = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    except Exception as exc:  # any failure here means the folder is unusable
        raise ModelConversionError(f"converted folder does not load: {type(exc).__name__}: {exc}") from exc
    want, got = model.state_dict(), model2.state_dict()
    bad = sorted(k for k in want if k not in got or not torch.equal(want[k], got[k]))
    if bad:
        raise ModelConversionError(f"converted weights differ from the GGUF's: {bad[:5]}")
    if getattr(model.config, "rope_parameters", None) != getattr(model2.config, "rope_parameters", None):
        raise ModelConversionError("converted config changed the rotary embedding parameters")
    text = tok.apply_chat_template(_PROBE_MESSAGES, tokenize=False, add_generation_prompt=True)
    if tok2.apply_chat_template(_PROBE_MESSAGES, tokenize=False, add_generation_prompt=True) != text:
        raise ModelConversionError("converted tokenizer renders the chat template differently")
    if tok2.encode(text, add_special_tokens=False) != tok.encode(text, add_special_tokens=False):
        raise ModelConversionError("converted tokenizer encodes differently from the GGUF's")
    if (tok2.eos_token_id, tok2.pad_token_id) != (tok.eos_token_id, tok.pad_token_id):
        raise ModelConversionError("converted tokenizer changed its eos/pad tokens")


def place_folder(tmp: Path, dest: Path, overwrite: bool) -> bool:
    """Rename a finished `tmp` folder to `dest`. Returns False (and deletes tmp) when `dest`
    already exists and overwrite is off, e.g. another process finished the same fetch first."""
    if dest.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
        return True
    try:
        os.replace(tmp, dest)
    except OSError:  # lost a race: dest appeared between the check and the rename
        if not dest.is_dir() or overwrite:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: Any = "float32",
                 meta: dict | None = None, overwrite: bool = False) -> Path:
    """Convert one GGUF chat model into a Hugging Face folder at `out_dir` and return it.

    float32 (the default) keeps the dequantised Q4 values exactly, so CPU training starts from
    precisely the GGUF's weights; bfloat16 halves the folder (SmolLM2-135M: 514 MB vs ~257 MB)
    at the cost of rounding them. `meta` adds fields to `erl_model.json`. Raises
    ModelConversionError (nothing left at out_dir) when the GGUF is unusable.
    """
    import transformers

    gguf = Path(gguf_path).expanduser().resolve()
    dest = Path(out_dir).expanduser().absolute()
    if not gguf.is_file():
        raise ModelConversionError(f"GGUF file not found: {gguf}")
    if dest.exists() and not overwrite:
        raise ModelConversionError(f"{dest} already exists (pass overwrite=True to replace it)")
    torch_dtype = as_dtype(dtype)
    digest = sha256_file(gguf)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        src, tok = _load_gguf(gguf, torch_dtype)
        aligned = align_special_tokens(tok, src, gguf_special_ids(gguf))
        model = _rebuild(src, torch_dtype)
        del src
        _save(model, tok, tmp)
        _verify(tmp, model, tok, torch_dtype)
        info = {"source": str(gguf), "gguf_file": gguf.name, "gguf_sha256": digest,
                "dtype": str(torch_dtype).removeprefix("torch."), "transformers": transformers.__version__,
                "pad_token": tok.pad_token, "eos_token": tok.eos_token, "aligned_to_gguf": aligned, **(meta or {})}
        (tmp / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        # mkdtemp and safetensors create owner-only modes; a model folder is ordinary shared data
        for entry in (tmp, *tmp.iterdir()):
            entry.chmod(0o755 if entry.is_dir() else 0o644)
        place_folder(tmp, dest, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op once renamed
    return dest
