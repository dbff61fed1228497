"""HotpotQA: multi-hop questions answered with a search tool over a local corpus.

Reward (ERL_SPEC section 4): 1 for an exact match, else the token F1 if it is >= 0.3,
else 0, after SQuAD answer normalisation. Success means exact match.

Data: HotpotQA's JSON files (a list of {"_id", "question", "answer", "supporting_facts",
"context": [[title, [sentences]]]}), the same rows as JSON Lines or parquet in the
Hugging Face layout (context = {"title": [...], "sentences": [[...]]}), or the HF data set
itself (`source: hf`, never used by the tests). The default data file is the project's
invented fixture, tests/fixtures/hotpotqa_mini.json.

Search: BM25 (bm25s) over the paragraphs of the whole data file (`corpus: data`), of the
question's own context only (`corpus: task`, HotpotQA's distractor setting), or of a
corpus file (JSON Lines of {"title", "text"} or {"contents"}); dense retrieval with a
sentence-transformers model when `retriever: dense` and `embedding_model` is a path.

As a text env (the local trainer's ChatAgent path) the agent acts with
    search[query]    -> the top passages        answer[text]    -> ends the episode, scored
The LangGraph example (examples/hotpotqa_langgraph) uses `get_search` as a tool instead
and `reward_fn` to score the graph's final answer.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from erl.core.config import ConfigError
from erl.envs.base import TaskEnv, check_int
from erl.envs.retrieval import Search, load_corpus, make_search

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hotpotqa_mini.json"
F1_FLOOR = 0.3  # below this a partial answer earns nothing
MAX_ACTION_CHARS = 4000  # only the tail of a reply is parsed

# ---------------------------------------------------------------- reward


def normalize_answer(text: Any) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = str(text or "").lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_f1(prediction: Any, gold: Any) -> float:
    """Token F1 of the normalised answers (HotpotQA's rule: a yes/no/noanswer on either
    side only scores when both sides are equal)."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in ("yes", "no", "noanswer") or ref in ("yes", "no", "noanswer")) and pred != ref:
        return 0.0
    common = Counter(pred.split()) & Counter(ref.split())
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred.split()), same / len(ref.split())
    return 2 * precision * recall / (precision + recall)


def hotpotqa_reward(prediction: Any, gold: Any) -> tuple[float, float, bool]:
    """(reward, f1, exact match)."""
    em = normalize_answer(prediction) == normalize_answer(gold)
    f1 = answer_f1(prediction, gold)
    return (1.0 if em else f1 if f1 >= F1_FLOOR else 0.0), f1, em


def extract_answer(text: Any) -> str:
    """The answer in a final reply: the last \\boxed{...}, <answer>...</answer> or
    answer[...], else the whole reply."""
    text = str(text or "")[-MAX_ACTION_CHARS:]
    for pattern in (r"\\boxed\{([^{}]*)\}", r"<answer>(.*?)</answer>", r"\banswer\[(.*?)\]"):
        found = re.findall(pattern, text, flags=re.IGNORECASE | re.DOTALL)
        if found:
            return found[-1].strip()
    return text.strip()


def describe_score(answer: str, reward: float, f1: float, em: bool) -> str:
    """Feedback that grades the answer without revealing the reference."""
    verdict = "exactly right" if em else "partly right" if reward > 0 else "wrong"
    return f"The answer {json.dumps(answer[:200])} is {verdict} (token F1 {f1:.2f}). Reward: {reward:g}"


def reward_fn(task: dict, reply: str) -> tuple[float, str]:
    """For LangGraph / OpenAI-client agents: score a final reply against task["answer"]."""
    answer = extract_answer(reply)
    if not answer:
        return 0.0, "The final reply holds no answer. Reward: 0"
    reward, f1, em = hotpotqa_reward(answer, task["answer"])
    return reward, describe_score(answer, reward, f1, em)


# ---------------------------------------------------------------- data and search


def _record(row: dict) -> dict:
    """A HotpotQA row (original JSON or Hugging Face layout) in the original layout."""
    ctx, facts = row.get("context", []), row.get("supporting_facts", [])
    if isinstance(ctx, dict):
        ctx = [[t, list(s)] for t, s in zip(ctx.get("title", []), ctx.get("sentences", []))]
    if isinstance(facts, dict):
        facts = [[t, int(i)] for t, i in zip(facts.get("title", []), facts.get("sent_id", []))]
    rid = row.get("_id", row.get("id"))
    if not isinstance(row.get("question"), str) or rid is None or "answer" not in row:
        raise ConfigError(f"HotpotQA row {str(row)[:80]!r}: needs '_id' (or 'id'), 'question' and 'answer'")
    if not isinstance(ctx, list) or not all(isinstance(c, (list, tuple)) and len(c) == 2
                                            and isinstance(c[1], (list, tuple)) for c in ctx):
        raise ConfigError("'context' must be a list of [title, [sentences]]")
    return {"id": str(rid), "question": row["question"], "answer": str(row["answer"]),
            "type": row.get("type", ""), "level": row.get("level", ""),
            "supporting_facts": [[str(t), int(i)] for t, i in facts],
            "context": [[str(t), [str(s) for s in sents]] for t, sents in ctx]}


@lru_cache(maxsize=8)
def load_records(path: str) -> tuple[dict, ...]:
    """Rows of a .json (a list), .jsonl or .parquet file in HotpotQA's format. A file that
    cannot be read, or a row that is not a HotpotQA row, is a ConfigError naming both."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"env.params.data_path: no such file {path!r}")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as exc:  # noqa: BLE001 (pyarrow raises many kinds; the user needs the file and cause)
            raise ConfigError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    elif p.suffix == ".jsonl":
        rows, lines = [], p.read_text(encoding="utf-8", errors="replace").splitlines()
        for lineno, line in enumerate(lines, 1):
            if line.strip():
                rows.append((lineno, _json(line, f"{path}:{lineno}")))
        return tuple(_checked_record(r, f"{path}:{lineno}") for lineno, r in rows)
    else:
        rows = _json(p.read_text(encoding="utf-8", errors="replace"), path)
        rows = rows.get("data", rows) if isinstance(rows, dict) else rows
    if not isinstance(rows, list):
        raise ConfigError(f"env.params.data_path: {path!r} must hold a list of HotpotQA rows")
    return tuple(_checked_record(r, f"{path}: row {i}") for i, r in enumerate(rows))


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid JSON (nested too deeply)") from None


def _checked_record(row: Any, where: str) -> dict:
    """_record, with any malformed field reported as the file and row it is in."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: a HotpotQA row must be an object, got {type(row).__name__}")
    try:
        return _record(row)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{where}: malformed 'context' or 'supporting_facts' "
                          f"({type(exc).__name__}: {exc})") from None


@lru_cache(maxsize=4)
def load_hf(name: str, config: str, split: str) -> tuple[dict, ...]:
    """The Hugging Face data set (downloads on first use). Without the network (or the `datasets`
    package) it is a ConfigError naming the file-based way, not a connection traceback."""
    try:
        from datasets import load_dataset

        rows = load_dataset(name, config, split=split)
    except (ImportError, OSError) as exc:  # requests' and the hub's connection errors are OSErrors
        raise ConfigError(f"env.params.source=hf: could not load {name} ({config}, {split}): {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}; without network access use "
                          "source=file with env.params.data_path (a HotpotQA JSON/JSONL file)") from None
    return tuple(_record(r) for r in rows)


def corpus_from_records(records: tuple[dict, ...] | list[dict]) -> list[tuple[str, str]]:
    """Distinct (title, paragraph) pairs of the records' contexts, in first-seen order."""
    docs: dict[str, str] = {}
    for r in records:
        for title, sents in r["context"]:
            docs.setdefault(title, " ".join(s.strip() for s in sents))
    return list(docs.items())


@lru_cache(maxsize=8)
def _shared_search(spec: str) -> Search:
    s = json.loads(spec)
    docs = (list(load_corpus(s["corpus"])) if s["corpus"] != "data" else
            corpus_from_records(load_hf(*s["hf"]) if s.get("hf") else load_records(s["data_path"])))
    return make_search(docs, s["retriever"], s["top_k"], s.get("embedding_model"))


def get_search(task_or_spec: dict) -> Search:
    """The search tool of a task (built once per corpus and shared by all its tasks)."""
    spec = task_or_spec.get("search", task_or_spec)
    if spec["corpus"] == "task":
        return make_search([(t, " ".join(s)) for t, s in task_or_spec.get("context", [])] or [("", "")],
                           spec["retriever"], spec["top_k"], spec.get("embedding_model"))
    return _shared_search(json.dumps(spec, sort_keys=True))


# ---------------------------------------------------------------- the environment

_ACTION = re.compile(r"\b(search|answer|finish)\[(.*?)\]", flags=re.IGNORECASE | re.DOTALL)


def parse_action(text: Any) -> tuple[str | None, str]:
    """The last search[...] / answer[...] (finish[...] as in ReAct) of a reply, or (None, "")."""
    found = _ACTION.findall(str(text or "")[-MAX_ACTION_CHARS:])
    if not found:
        return None, ""
    kind, arg = found[-1]
    return ("search" if kind.lower() == "search" else "answer"), arg.strip()


def _split_of(record_id: str, val_percent: int) -> str:
    """Train or val by a digest of the question id: stable across runs and processes."""
    bucket = int(hashlib.sha256(f"hotpotqa\n{record_id}".encode()).hexdigest()[:8], 16) % 100
    return "val" if bucket < val_percent else "train"


def _check(cond: bool, field: str, want: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"env.params.{field} must be {want}, got {value!r}")


class HotpotQAEnv(TaskEnv):
    """## Action
    `search[query]` or `answer[text]` per turn; anything else is an invalid action (the turn
    is spent, the feedback names the two forms).
    ## Observation
    First the question; after a search, the top `top_k` passages; after an answer, its score.
    ## Reward
    The answer's: 1 for an exact match, else its token F1 when >= 0.3, else 0 (an empty
    answer 0); success means exact match. Searches earn nothing.
    ## Episode end
    An answer, or `max_turns` turns without one (0).
    """

    name = "hotpotqa"
    PARAMS: ClassVar[dict[str, Any]] = {
        "source": "file", "data_path": None, "val_data_path": None, "val_percent": 20,
        "hf_name": "hotpotqa/hotpot_qa", "hf_config": "distractor",
        "corpus": "data", "retriever": "bm25", "embedding_model": None, "top_k": 3, "max_turns": 8,
    }

    def __init__(self, task: dict):
        for key in ("question", "answer", "search"):
            if key not in task:
                raise ConfigError(f"hotpotqa task {task.get('task_id', '?')!r} has no {key!r}")
        super().__init__(task)
        self.search = get_search(task)
        self.max_turns = int(task.get("max_turns", self.PARAMS["max_turns"]))
        self.reset()

    @classmethod
    def check_params(cls, p: dict) -> None:
        _check(p["source"] in ("file", "hf"), "source", "'file' or 'hf'", p["source"])
        for key in ("data_path", "val_data_path", "embedding_model"):
            _check(p[key] is None or isinstance(p[key], str), key, "a path or null", p[key])
        if p["source"] == "file":
            p["data_path"] = str(Path(p["data_path"] or FIXTURE).resolve())
            for key in ("data_path", "val_data_path"):
                if p[key] is not None and not Path(p[key]).is_file():
                    raise ConfigError(f"env.params.{key}: no such file {p[key]!r}")
        for key in ("hf_name", "hf_config"):
            _check(isinstance(p[key], str) and bool(p[key]), key, "a non-empty string", p[key])
        corpus = p["corpus"]
        _check(isinstance(corpus, str) and (corpus in ("data", "task") or Path(corpus).is_file()), "corpus",
               "'data', 'task' or an existing corpus file", corpus)
        _check(p["retriever"] in ("bm25", "dense"), "retriever", "'bm25' or 'dense'", p["retriever"])
        if p["retriever"] == "dense" and not p["embedding_model"]:
            raise ConfigError("env.params.embedding_model: retriever=dense needs a sentence-transformers model path")
        check_int(p, "top_k", 1, 20)
        check_int(p, "max_turns", 1, 50)
        check_int(p, "val_percent", 0, 90)

    @classmethod
    def system_prompt(cls, task: dict) -> str:
        turns = int(task.get("max_turns", cls.PARAMS["max_turns"]))
        return ("Answer the user's question. You can search a collection of documents. Each turn, reply with "
                "exactly one action: search[query] to see the passages that best match the query, or "
                "answer[your answer] to give your final answer, a short phrase. "
                f"You have at most {turns} turns.")

    @classmethod
    def make_tasks(cls, n: int, seed: int = 0, split: str = "train", **params) -> list[dict]:
        """Up to n tasks of `split`, shuffled by `seed` (fewer when the data holds fewer)."""
        p = cls.validate_params(params)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"n (number of tasks) must be an integer >= 0, got {n!r}")
        if split not in ("train", "val"):
            raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
        spec = {"corpus": p["corpus"], "retriever": p["retriever"], "top_k": p["top_k"],
                "embedding_model": p["embedding_model"]}
        if p["source"] == "hf":
            hf = [p["hf_name"], p["hf_config"], "train" if split == "train" else "validation"]
            records = list(load_hf(*hf))
            spec["hf"] = hf
        elif split == "val" and p["val_data_path"]:
            records, spec["data_path"] = list(load_records(p["val_data_path"])), p["val_data_path"]
        else:
            records = list(load_records(p["data_path"]))
            spec["data_path"] = p["data_path"]
            if not p["val_data_path"]:  # one file: a stable hash split
                records = [r for r in records if _split_of(r["id"], p["val_percent"]) == split]
        if not records and n > 0:
            raise ConfigError(f"env.params: the HotpotQA data holds no {split} questions")
        random.Random(f"hotpotqa/{split}/{seed}").shuffle(records)
        tasks = []
        for r in records[:n]:
            task = {"task_id": f"hotpotqa-{split}-{r['id']}", "env": cls.name, "split": split,
                    "memory_key": cls.name, "question": r["question"], "answer": r["answer"], "type": r["type"],
                    "level": r["level"], "supporting_facts": r["supporting_facts"], "max_turns": p["max_turns"],
                    "search": spec}
            if p["corpus"] == "task":
                task["context"] = r["context"]
            tasks.append(task)
        return tasks

    def reset(self) -> tuple[str, dict]:
        self.turn, self.done = 0, False
        return f"Question: {self.task['question']}", {"success": False, "turn": 0}

    def step(self, action: Any) -> tuple[str, float, bool, dict]:
        if self.done:
            return "The episode has already ended.", 0.0, True, {"success": False, "valid": False}
        self.turn += 1
        kind, arg = parse_action(action)
        reward = 0.0
        info: dict = {"success": False, "valid": kind is not None, "action": kind, "turn": self.turn}
        if kind == "search":
            observation = self.search(arg)
        elif kind == "answer":
            self.done = True
            if not arg:
                observation = "The answer is empty. Reward: 0"
            else:
                reward, f1, em = hotpotqa_reward(arg, self.task["answer"])
                info.update(f1=f1, em=em, success=em)
                observation = describe_score(arg, reward, f1, em)
        else:
            shown = " ".join(str(action or "").split())[:60]
            observation = f"Invalid action {json.dumps(shown)}. Reply with search[query] or answer[text]."
        if not self.done and self.turn >= self.max_turns:
            self.done = True
            observation += "\nOut of turns without an answer. Reward: 0"
        return observation, reward, self.done, info
