"""Retrieval benchmark: SQuAD recall@k per method, and speed on a synthetic ~10 MB text.

Run from the repository root: ``.venv/bin/python bench/retrieval.py`` (about 1-2 minutes on two
CPU cores). Prints one JSON object. Recall counts an answerable question as found when a gold
answer occurs verbatim (raw, case-sensitive substring) in one of the top-k chunks.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chatlm.knowledge.chunk import (  # noqa: E402
    DEFAULT_MAX_TOKENS,
    DEFAULT_OVERLAP_TOKENS,
    chunk_text,
)
from chatlm.knowledge.embed import Embedder  # noqa: E402
from chatlm.knowledge.index import HybridIndex  # noqa: E402
from chatlm.knowledge.squad import Article, answer_in_chunks, load_squad  # noqa: E402

DEFAULT_SQUAD = ROOT.parent / "shared/data/squad2-dev-sample.json"
MODES = ("bm25", "dense", "hybrid")
KS = (1, 3, 5)


def recall(
    articles: list[Article], embedder: Embedder, chunker: str, max_tokens: int, overlap: int
) -> dict[str, object]:
    """Recall@1/3/5 per method; ``chunker`` is ``chunk_text`` or ``paragraphs`` (SQuAD's own)."""
    found = {m: dict.fromkeys(KS, 0) for m in MODES}
    total = n_chunks = 0
    for art in articles:
        if chunker == "paragraphs":
            texts = list(art.paragraphs)
        else:
            texts = [
                c.text for c in chunk_text(art.text, max_tokens=max_tokens, overlap_tokens=overlap)
            ]
        n_chunks += len(texts)
        index = HybridIndex(texts, embedder.embed(texts), embedder=embedder)
        questions = [q for q in art.questions if not q.is_impossible]
        qvecs = embedder.embed([q.question for q in questions])
        total += len(questions)
        for q, vec in zip(questions, qvecs, strict=True):
            for mode in MODES:
                hits = index.search(q.question, k=max(KS), mode=mode, query_vector=vec)  # type: ignore[arg-type]
                for k in KS:
                    found[mode][k] += answer_in_chunks(q.answers, [texts[h.idx] for h in hits[:k]])
    out: dict[str, object] = {"chunks": n_chunks, "questions": total}
    for mode in MODES:
        out[mode] = {f"recall@{k}": round(found[mode][k] / total, 3) for k in KS}
    return out


def synthetic_text(articles: list[Article], size: int, seed: int = 0) -> str:
    """About ``size`` characters of SQuAD-like prose: real sentences, 15% of words swapped for
    Zipf-distributed made-up words, so the vocabulary and posting lists grow like a real book's.
    """
    rng = random.Random(seed)
    sentences = [s for a in articles for p in a.paragraphs for s in re.split(r"(?<=\.)\s+", p)]
    ranks = np.arange(1, 200_001)
    weights = 1.0 / ranks
    fake = np.random.default_rng(seed).choice(ranks, size=size // 4, p=weights / weights.sum())
    fake_iter = iter(fake.tolist())
    paragraphs, length = [], 0
    while length < size:
        words = " ".join(rng.choice(sentences) for _ in range(rng.randint(3, 7))).split()
        words = [f"w{next(fake_iter)}" if rng.random() < 0.15 else w for w in words]
        paragraphs.append(" ".join(words))
        length += len(paragraphs[-1]) + 2
    return "\n\n".join(paragraphs)


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
    }


def speed(articles: list[Article], embedder: Embedder, size_mb: float, n_queries: int) -> dict:
    text = synthetic_text(articles, int(size_mb * 1024 * 1024))
    t0 = time.perf_counter()
    chunks = chunk_text(text)
    t1 = time.perf_counter()
    texts = [c.text for c in chunks]
    index = HybridIndex(texts, embedder=embedder)
    t2 = time.perf_counter()
    questions = [q.question for a in articles for q in a.questions][:n_queries]
    embedder.embed_query("warm up")
    bm25_t = []
    for q in questions:
        s = time.perf_counter()
        index.search(q, k=3)
        bm25_t.append(time.perf_counter() - s)
    rng = np.random.default_rng(0)
    fake = rng.standard_normal((len(texts), embedder.dim)).astype(np.float32)
    index.set_embeddings(fake)
    hybrid_t, embed_t, fuse_t = [], [], []
    for q in questions:
        s = time.perf_counter()
        index.search(q, k=3)  # embeds the query with the real MiniLM, then fuses
        hybrid_t.append(time.perf_counter() - s)
        s = time.perf_counter()
        vec = embedder.embed_query(q)
        embed_t.append(time.perf_counter() - s)
        s = time.perf_counter()
        index.search(q, k=3, query_vector=vec)
        fuse_t.append(time.perf_counter() - s)
    return {
        "text_mb": round(len(text.encode()) / 1024**2, 2),
        "chunks": len(texts),
        "chunking_s": round(t1 - t0, 2),
        "bm25_index_s": round(t2 - t1, 2),
        "queries": len(questions),
        "bm25_query": percentiles(bm25_t),
        "hybrid_query": percentiles(hybrid_t),
        "query_embedding": percentiles(embed_t),
        "hybrid_query_given_vector": percentiles(fuse_t),
        "note": "hybrid uses random unit vectors as chunk embeddings (embedding 10 MB on CPU "
        "takes too long); hybrid_query includes embedding the query with the real MiniLM, "
        "hybrid_query_given_vector is BM25 + dense scoring + fusion alone",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--squad", type=Path, default=DEFAULT_SQUAD)
    parser.add_argument("--size-mb", type=float, default=10.0)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--no-sweep", action="store_true", help="skip the chunk-size sweep")
    args = parser.parse_args()

    articles = load_squad(args.squad)
    embedder = Embedder()
    default = f"chunk_text {DEFAULT_MAX_TOKENS}/{DEFAULT_OVERLAP_TOKENS}"
    result: dict[str, object] = {
        "squad": {
            default: recall(
                articles, embedder, "chunk_text", DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS
            ),
            "squad paragraphs (reference)": recall(articles, embedder, "paragraphs", 0, 0),
        }
    }
    if not args.no_sweep:
        sweep = {}
        for mt, ov in ((96, 24), (128, 32), (256, 64)):
            r = recall(articles, embedder, "chunk_text", mt, ov)
            sweep[f"{mt}/{ov}"] = {m: r[m]["recall@3"] for m in MODES}  # type: ignore[index]
        result["squad_recall@3_by_chunk_size"] = sweep
    result["synthetic"] = speed(articles, embedder, args.size_mb, args.queries)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
