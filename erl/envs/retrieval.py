"""Passage retrieval for search tools: BM25 (bm25s) and dense (sentence-transformers).

`Search` is the tool an agent calls: a query in, the top passages out as text. It never
raises on a query (an empty or unmatched one gets a "No results" line), because the query
is untrusted model text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from erl.core.config import ConfigError

MAX_PASSAGE_CHARS = 600


@lru_cache(maxsize=4)
def load_corpus(path: str) -> tuple[tuple[str, str], ...]:
    """A corpus file: JSON Lines of {"title", "text"} or {"contents": "title\\ntext"}."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"env.params.corpus: no such file {path!r}")
    docs = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"env.params.corpus: {path}:{i} is not valid JSON") from None
        if not isinstance(d, dict):
            raise ConfigError(f"env.params.corpus: {path}:{i} must be a JSON object")
        if "contents" in d:
            title, _, text = str(d["contents"]).partition("\n")
        elif "text" in d:
            title, text = str(d.get("title", "")), str(d["text"])
        else:
            raise ConfigError(f"env.params.corpus: {path}:{i} needs 'text' (and 'title') or 'contents'")
        docs.append((title.strip().strip('"'), text.strip()))
    return tuple(docs)


class BM25Retriever:
    def __init__(self, docs: list[tuple[str, str]]):
        # Where jax is installed, importing bm25s runs a jax top-k, and jax on a GPU reserves
        # 75% of its memory in this process (it starved the other runs of a shared GPU): keep
        # jax on the CPU unless the user chose a platform.
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import bm25s

        self._bm25s = bm25s
        self.index = bm25s.BM25()
        self.index.index(self._tokens([f"{t}. {x}" for t, x in docs]), show_progress=False)
        self.size = len(docs)

    def _tokens(self, texts: list[str]) -> list[list[str]]:
        return self._bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        tokens = self._tokens([query])
        if not tokens[0]:
            return []
        # numpy: top-k over one query's scores gains nothing from jax (bm25s's "auto" choice)
        ids, scores = self.index.retrieve(tokens, k=min(k, self.size), show_progress=False,
                                          backend_selection="numpy")
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]


class DenseRetriever:
    """Cosine similarity of sentence embeddings. `encode(texts) -> array [n, d]`, or a
    sentence-transformers model path (E5-style prefixes by default)."""

    def __init__(self, docs: list[tuple[str, str]], model: str | None = None,
                 encode: Callable[[list[str]], Any] | None = None,
                 query_prefix: str = "query: ", passage_prefix: str = "passage: "):
        if encode is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ConfigError("env.params.retriever=dense needs `pip install sentence-transformers`") from None
            encode = partial(SentenceTransformer(model).encode, normalize_embeddings=True)
        self.encode, self.query_prefix = encode, query_prefix
        self.vectors = self._unit(encode([f"{passage_prefix}{t}. {x}" for t, x in docs]))

    @staticmethod
    def _unit(v: Any) -> np.ndarray:
        v = np.asarray(v, dtype=np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        if not query.strip():
            return []
        scores = self.vectors @ self._unit(self.encode([self.query_prefix + query]))[0]
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(i), float(scores[i])) for i in top]


class Search:
    """The search tool: a query in, the top passages out as text. Never raises on a query."""

    def __init__(self, docs: list[tuple[str, str]], retriever: Any, top_k: int = 3):
        self.docs, self.retriever, self.top_k = list(docs), retriever, top_k

    def __call__(self, query: Any) -> str:
        query = " ".join(str(query or "").split())[:500]
        hits = self.retriever.search(query, self.top_k) if query else []
        if not hits:
            return f"No results for {json.dumps(query)}."
        lines = [f"Results for {json.dumps(query)}:"]
        for rank, (i, _) in enumerate(hits, 1):
            title, text = self.docs[i]
            lines.append(f"[{rank}] {title}: {text[:MAX_PASSAGE_CHARS]}")
        return "\n".join(lines)


def make_search(docs: list[tuple[str, str]], retriever: str = "bm25", top_k: int = 3,
                embedding_model: str | None = None, encode: Callable | None = None) -> Search:
    if retriever == "dense":
        return Search(docs, DenseRetriever(docs, embedding_model, encode), top_k)
    return Search(docs, BM25Retriever(docs), top_k)
