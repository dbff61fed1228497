"""The dataset directory: one JSONL file per kind of record, checked on read; token rows; parquet.

    expert.jsonl   D_expert: s_i, a_i, s_{i+1} and the IL chat
    rollout.jsonl  D_rollout: s_i, a_i^j, s_i^j (plus the expert's a_i and s_{i+1}, and where
                   a_i^j came from); read by people, not trained on
    iwm.jsonl      world-model chats: (s_i, a_i^j) -> s_i^j
    sr.jsonl       self-reflection chats: s_i -> c_i^j + a_i
    manifest.json  the build's settings and counts

Every trainable record carries `messages`, a chat whose last (assistant) message is the only
trained text: the local trainer and verl's MultiTurnSFTDataset read the same chats.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from erl.core.config import ConfigError
from erl.core.types import TokenSample
from erl.fileio import read_jsonl_objects
from erl.models.chat import ChatTokenizer, chat_ids

KIND_FILES = {"expert": "expert.jsonl", "rollout": "rollout.jsonl", "iwm": "iwm.jsonl", "sr": "sr.jsonl",
              "reflect": "reflect.jsonl"}
MANIFEST = "manifest.json"


def check_out(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"out: {out} is not empty (an earlier build?); pass overwrite=true or choose another out")
    return out


def write_dataset(out: str | Path, records: dict[str, list[dict]], manifest: dict, overwrite: bool = False) -> Path:
    """Write into out.tmp/ and rename: an interrupted build never looks like a finished one."""
    out = check_out(out, overwrite)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for kind, rows in records.items():
        with (tmp / KIND_FILES[kind]).open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _check_messages(messages, where: str) -> None:
    ok = (isinstance(messages, list) and len(messages) >= 2
          and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                  for m in messages))
    if not ok:
        raise ConfigError(f"{where}: `messages` must be a list of >= 2 {{role, content}} string pairs")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"]:
        raise ConfigError(f"{where}: the last message must be a non-empty assistant message (the target)")
    if any(m["role"] == "assistant" for m in messages[:-1]):
        raise ConfigError(f"{where}: only the last message may be the assistant's (it is the only trained text)")


def read_records(path: str | Path) -> list[dict]:
    rows = []
    for lineno, row in read_jsonl_objects(path, "record"):
        if "messages" in row:
            _check_messages(row["messages"], f"{path}:{lineno}")
        rows.append(row)
    return rows


def stage_files(data_dir: str | Path, files: list[str]) -> list[Path]:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"data: {data_dir} is not a folder; write one with `erl-early build out={data_dir}`")
    paths = [data_dir / name for name in files]
    for p in paths:
        if not p.is_file():
            hint = " (build with rationales=true)" if p.name == KIND_FILES["sr"] else ""
            raise ConfigError(f"data: {p} is missing; this stage reads {files}{hint}")
    return paths


def stage_records(data_dir: str | Path, files: list[str]) -> list[dict]:
    """All trainable records of a stage; an empty stage is an error, not a no-op run."""
    rows = []
    for p in stage_files(data_dir, files):
        got = read_records(p)
        untrainable = [i for i, r in enumerate(got) if "messages" not in r]
        if untrainable:
            raise ConfigError(f"{p}: record {untrainable[0] + 1} has no `messages`; it cannot be trained on")
        rows += got
    if not rows:
        raise ConfigError(f"data: {', '.join(files)} in {data_dir} hold no records: nothing to train on")
    return rows


def files_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def record_sample(messages: list[dict], chat: ChatTokenizer) -> TokenSample:
    """The chat as one row: the context is the prompt, the last message (up to and including
    the end-of-turn token, where generation stops) is the response, all of it trained."""
    prompt = chat.prompt_ids(messages[:-1])
    full = chat_ids(chat.tokenizer, messages, add_generation_prompt=False)
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template renders the context differently once the answer is appended")
    target = full[len(prompt):]
    close = chat.turn_close_ids
    if close and target[-len(close):] == close:
        target = target[: len(target) - len(close) + 1]
    return TokenSample(prompt_ids=prompt, response_ids=target, response_mask=[1] * len(target),
                       logprobs=[0.0] * len(target))


def export_parquet(records: list[dict], path: str | Path) -> Path:
    """verl's SFT dataset reads `messages` (data.messages_key); the other columns are for people."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"messages": [r["messages"] for r in records],
                          "kind": [str(r.get("kind", "")) for r in records],
                          "task_id": [str(r.get("task_id", "")) for r in records]})
    frame.to_parquet(path, index=False)
    return path
