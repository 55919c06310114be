"""Knowledge texts for conversations: load (parse -> chunk -> store), index per conversation
(BM25 at once, dense embeddings in the background), and retrieve passages for a question."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from chatlm.errors import InputError
from chatlm.identity.accounts import Actor
from chatlm.knowledge.chunk import chunk_text
from chatlm.knowledge.index import HybridIndex
from chatlm.knowledge.parse import parse_bytes, parse_text
from chatlm.store import documents as docs
from chatlm.store.db import transaction
from chatlm.store.models import Document

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
DIM = 384


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk, numbered as the prompt shows it."""

    number: int
    chunk_id: int
    document: str
    text: str
    start: int
    end: int
    score: float

    def as_source(self) -> dict[str, Any]:
        return {"n": self.number, "chunk_id": self.chunk_id, "document": self.document,
                "start": self.start, "end": self.end, "score": round(self.score, 6)}


@dataclass
class _Index:
    key: tuple[int, ...]
    index: HybridIndex
    chunks: list[tuple[int, str, str, int, int]]  # chunk id, doc name, text, start, end


class Library:
    """One per process; indexes are cached per set of documents and rebuilt when that changes."""

    def __init__(self, sessions: sessionmaker[Session], *, embedder: Any = None,
                 background: bool = True) -> None:
        self.sessions = sessions
        self._embedder = embedder
        self.background = background
        self._indexes: dict[tuple[int, ...], _Index] = {}
        self._lock = threading.Lock()
        self._jobs: dict[int, threading.Thread] = {}

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from chatlm.knowledge.embed import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    # ---- loading --------------------------------------------------------------------------
    def load(self, *, actor: Actor, conversation_id: int, name: str, data: bytes | None = None,
             text: str | None = None, progress: Progress | None = None) -> Document:
        """Parse, chunk and store a document and attach it to the conversation, in one transaction;
        dense embedding then runs in the background (BM25 answers at once)."""
        report = progress or (lambda _f, _m: None)
        report(0.05, "reading")
        if data is not None:
            body = parse_bytes(data, name)
            mime = "application/pdf" if name.lower().endswith(".pdf") else "text/plain"
        elif text is not None:
            body, mime = parse_text(text), "text/plain"
        else:
            raise InputError("Paste a text or upload a file.")
        report(0.3, "chunking")
        spans = chunk_text(body)
        report(0.6, "storing")
        with transaction(self.sessions) as s:
            doc = docs.add_document(s, user_id=actor.user_id, name=name or "pasted text", mime=mime,
                                    text=body, chunks=[(c.idx, c.start, c.end, c.text) for c in spans])
            docs.attach(s, conversation_id=conversation_id, document_id=doc.id, user_id=actor.user_id)
        report(0.8, "indexing")
        self.index_for(conversation_id)
        if not doc.embedded:
            self._embed_later(doc.id)
        report(1.0, "ready")
        return doc

    def attach(self, *, actor: Actor, conversation_id: int, document_id: int) -> None:
        with transaction(self.sessions) as s:
            docs.attach(s, conversation_id=conversation_id, document_id=document_id, user_id=actor.user_id)

    def detach(self, *, actor: Actor, conversation_id: int, document_id: int) -> None:
        with transaction(self.sessions) as s:
            docs.detach(s, conversation_id=conversation_id, document_id=document_id, user_id=actor.user_id)

    def documents(self, conversation_id: int) -> list[Document]:
        with transaction(self.sessions) as s:
            return docs.conversation_documents(s, conversation_id=conversation_id)

    def user_documents(self, actor: Actor) -> list[Document]:
        with transaction(self.sessions) as s:
            return docs.user_documents(s, user_id=actor.user_id)

    def chunk_texts(self, chunk_ids: list[int]) -> dict[int, str]:
        with transaction(self.sessions) as s:
            return {c.id: c.text for c in docs.chunks_by_id(s, chunk_ids=chunk_ids)}

    def _embed_later(self, document_id: int) -> None:
        if not self.background:
            self.embed_document(document_id)
            return
        with self._lock:
            if document_id in self._jobs and self._jobs[document_id].is_alive():
                return
            job = threading.Thread(target=self.embed_document, args=(document_id,), daemon=True,
                                   name=f"embed-{document_id}")
            self._jobs[document_id] = job
        job.start()

    def embed_document(self, document_id: int) -> None:
        """Embed every chunk, store the vectors, and give live indexes their dense half."""
        try:
            with transaction(self.sessions) as s:
                texts = [c.text for c in docs.chunks_of(s, document_ids=[document_id])]
            vectors = self.embedder.embed(texts).astype(np.float32)
            with transaction(self.sessions) as s:
                docs.store_embeddings(s, document_id=document_id,
                                      vectors=[v.tobytes() for v in vectors])
            with self._lock:
                stale = [k for k in self._indexes if document_id in k]
                for key in stale:
                    del self._indexes[key]
        except Exception:  # a failed embedding leaves BM25 serving; logged for the operator
            log.exception("embedding document %s failed", document_id)

    def wait_for_embeddings(self, timeout: float = 300) -> None:
        for job in list(self._jobs.values()):
            job.join(timeout)

    # ---- retrieval ------------------------------------------------------------------------
    def index_for(self, conversation_id: int) -> _Index | None:
        with transaction(self.sessions) as s:
            doc_list = docs.conversation_documents(s, conversation_id=conversation_id)
            key = tuple(d.id for d in doc_list)
            if not key:
                return None
            with self._lock:
                if key in self._indexes:
                    return self._indexes[key]
            names = {d.id: d.name for d in doc_list}
            rows = docs.chunks_of(s, document_ids=list(key))
            chunks = [(c.id, names[c.document_id], c.text, c.start, c.end) for c in rows]
            vectors = [c.embedding for c in rows]
        embeddings = None
        if vectors and all(v is not None for v in vectors):
            embeddings = np.stack([np.frombuffer(v, dtype=np.float32) for v in vectors])
        index = HybridIndex([c[2] for c in chunks], embeddings, embedder=self._embedder)
        built = _Index(key=key, index=index, chunks=chunks)
        with self._lock:
            self._indexes[key] = built
        return built

    def passages_with(self, conversation_id: int, texts: Sequence[str]) -> list[Passage]:
        """The chat's passages whose texts are ``texts``, in that order, numbered from 1; none
        unless the chat's documents hold every one (a question read again from the passages it was
        taught on, ``chatlm.adapters.scope``)."""
        built = self.index_for(conversation_id) if texts else None
        if built is None:
            return []
        where = {text.strip(): i for i, (_, _, text, _, _) in reversed(list(enumerate(built.chunks)))}
        if any(text.strip() not in where for text in texts):
            return []
        out = []
        for n, text in enumerate(texts, start=1):
            cid, doc, chunk, start, end = built.chunks[where[text.strip()]]
            out.append(Passage(number=n, chunk_id=cid, document=doc, text=chunk, start=start, end=end, score=0.0))
        return out

    def retrieve(self, conversation_id: int, question: str, k: int = 3) -> list[Passage]:
        built = self.index_for(conversation_id)
        if built is None:
            return []
        hits = built.index.search(question, k=k)  # fusion once embeddings exist, BM25 before
        # no word in common ("Summarise the text."): the text's opening passages still ground it
        ranked = [(hit.idx, float(hit.score)) for hit in hits] or [(i, 0.0) for i in range(min(k, len(built.chunks)))]
        out = []
        for n, (idx, score) in enumerate(ranked, start=1):
            cid, doc, text, start, end = built.chunks[idx]
            out.append(Passage(number=n, chunk_id=cid, document=doc, text=text, start=start,
                               end=end, score=score))
        return out
