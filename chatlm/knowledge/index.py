"""Hybrid retrieval over chunk texts: BM25 at once, dense cosine when embeddings arrive.

BM25 is ready in seconds even for a large text, while embedding it takes minutes on a CPU, so
the index answers with BM25 alone until :meth:`HybridIndex.set_embeddings` is called from the
background job. With both, the two rankings are merged by reciprocal rank fusion (RRF), which
needs no score calibration between the two and beats either alone on SQuAD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import bm25s
import numpy as np

RRF_K = 60
CANDIDATES = 100
"""How deep each ranking goes into the fusion; documents below it add nothing."""
_TOKEN_PATTERN = r"(?u)\b\w\w+\b"

Mode = Literal["auto", "bm25", "dense", "hybrid"]


class QueryEmbedder(Protocol):
    """Anything that turns a query into a unit vector (the real Embedder or a test fake)."""

    def embed_query(self, text: str) -> np.ndarray: ...


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk: its index in ``texts``, a score and its rank (1-based) per method.

    ``score`` is the RRF score when both methods ran, else the BM25 score or the cosine.
    """

    idx: int
    score: float
    bm25_rank: int | None
    dense_rank: int | None


def _tokenize(texts: list[str]) -> list[list[str]]:
    """Lower-cased words of two or more characters, English stopwords removed (as bm25s does)."""
    return bm25s.tokenize(
        texts,
        lower=True,
        token_pattern=_TOKEN_PATTERN,
        stopwords="en",
        return_ids=False,
        show_progress=False,
    )


def normalise_rows(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, so a product of two is their cosine."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.maximum(norms, 1e-12)


def _top(scores: np.ndarray, n: int, *, positive: bool) -> np.ndarray:
    """Indices of the ``n`` best scores, best first (only scores > 0 when ``positive``)."""
    n = min(n, len(scores))
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
    part = part[np.lexsort((part, -scores[part]))]  # by score, ties by position
    return part[scores[part] > 0] if positive else part


class HybridIndex:
    """BM25 (bm25s) plus optional dense cosine search over a fixed list of chunk texts."""

    def __init__(
        self,
        texts: Sequence[str],
        embeddings: np.ndarray | None = None,
        *,
        embedder: QueryEmbedder | None = None,
        rrf_k: int = RRF_K,
        candidates: int = CANDIDATES,
    ) -> None:
        self._n = len(texts)
        self._embedder = embedder
        self.rrf_k = rrf_k
        self.candidates = candidates
        self._bm25: bm25s.BM25 | None = None
        if self._n:
            tokens = bm25s.tokenize(
                list(texts),
                lower=True,
                token_pattern=_TOKEN_PATTERN,
                stopwords="en",
                show_progress=False,
            )
            if tokens.vocab:  # bm25s cannot index a corpus made only of stopwords
                self._bm25 = bm25s.BM25()
                self._bm25.index(tokens, show_progress=False)
        self._emb: np.ndarray | None = None
        if embeddings is not None:
            self.set_embeddings(embeddings)

    def __len__(self) -> int:
        return self._n

    @property
    def has_dense(self) -> bool:
        """Whether embeddings are set, so searches fuse BM25 with dense retrieval."""
        return self._emb is not None

    def set_embeddings(self, embeddings: np.ndarray) -> None:
        """Add (or replace) chunk embeddings, one row per text; rows are L2-normalised here.

        Safe to call from another thread while searches run: the array is swapped in whole.
        """
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != self._n:
            raise ValueError(f"need {self._n} embedding rows, got shape {embeddings.shape}")
        self._emb = normalise_rows(embeddings)

    def _query_embedder(self) -> QueryEmbedder:
        if self._embedder is None:
            from chatlm.knowledge.embed import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    def bm25_scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for ``query`` (zeros when no query word is indexed)."""
        scores = np.zeros(self._n, dtype=np.float32)
        if self._bm25 is None:
            return scores
        vocab = self._bm25.vocab_dict
        ids = [vocab[t] for t in _tokenize([query])[0] if t in vocab]
        if ids:
            scores = self._bm25.get_scores_from_ids(ids)
        return scores

    def dense_scores(self, query: str | np.ndarray) -> np.ndarray:
        """Cosine similarity of every chunk to the query (text or unit vector)."""
        emb = self._emb
        if emb is None:
            raise ValueError("no embeddings set")
        vec = self._query_embedder().embed_query(query) if isinstance(query, str) else query
        return emb @ np.asarray(vec, dtype=np.float32)

    def search(
        self,
        query: str,
        k: int = 3,
        *,
        mode: Mode = "auto",
        query_vector: np.ndarray | None = None,
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query``, best first.

        ``auto`` fuses BM25 and dense when embeddings are set, else uses BM25 alone.
        ``query_vector`` skips embedding the query (e.g. when it was embedded already).
        """
        if k <= 0 or self._n == 0 or not query.strip():
            return []
        emb = self._emb
        if mode == "auto":
            mode = "hybrid" if emb is not None else "bm25"
        if mode in ("dense", "hybrid") and emb is None:
            raise ValueError(f"mode {mode!r} needs embeddings")
        depth = max(k, self.candidates)
        bm25_rank: dict[int, int] = {}
        dense_rank: dict[int, int] = {}
        bm25 = dense = None
        if mode in ("bm25", "hybrid"):
            bm25 = self.bm25_scores(query)
            bm25_rank = {int(i): r for r, i in enumerate(_top(bm25, depth, positive=True), 1)}
        if mode in ("dense", "hybrid"):
            dense = self.dense_scores(query if query_vector is None else query_vector)
            dense_rank = {int(i): r for r, i in enumerate(_top(dense, depth, positive=False), 1)}
        if mode == "bm25":
            return [Hit(i, float(bm25[i]), r, None) for i, r in list(bm25_rank.items())[:k]]
        if mode == "dense":
            return [Hit(i, float(dense[i]), None, r) for i, r in list(dense_rank.items())[:k]]
        fused: dict[int, float] = {}
        for ranks in (bm25_rank, dense_rank):
            for i, r in ranks.items():
                fused[i] = fused.get(i, 0.0) + 1.0 / (self.rrf_k + r)
        best = sorted(fused, key=lambda i: (-fused[i], bm25_rank.get(i, depth + 1), i))[:k]
        return [Hit(i, fused[i], bm25_rank.get(i), dense_rank.get(i)) for i in best]
