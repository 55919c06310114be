"""Data functions for knowledge texts: documents (stored once per user and sha256), chunks,
embeddings, and which conversations use which documents."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from chatlm.errors import NotFoundError
from chatlm.store import repo
from chatlm.store.models import Chunk, Conversation, ConversationDocument, Document


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def find_document(session: Session, *, user_id: int, text: str) -> Document | None:
    """This user's copy of ``text``: only their own rows, so another user's never answers."""
    return session.scalar(select(Document).where(Document.user_id == user_id,
                                                 Document.sha256 == sha256(text)))


def add_document(session: Session, *, user_id: int, name: str, mime: str, text: str,
                 chunks: Sequence[tuple[int, int, int, str]]) -> Document:
    """Store a document and its chunks ``(idx, start, end, text)``; the same content is stored once
    per user. Deduplicating across users would let the second one learn, from a refusal or a
    name, what the first one loaded; each user's copy is chunked and embedded on its own."""
    existing = find_document(session, user_id=user_id, text=text)
    if existing is not None:
        return existing
    doc = Document(sha256=sha256(text), name=name[:300], mime=mime, text=text, user_id=user_id)
    session.add(doc)
    session.flush()
    session.add_all(Chunk(document_id=doc.id, idx=i, start=s, end=e, text=t)
                    for i, s, e, t in chunks)
    session.flush()
    return doc


def attach(session: Session, *, conversation_id: int, document_id: int, user_id: int) -> None:
    """Use a document in a conversation: both must be the user's (a text they loaded, or one
    already in one of their chats); another user's document id is refused as unknown."""
    repo.get_conversation(session, conversation_id=conversation_id, user_id=user_id)
    if not owns_document(session, document_id=document_id, user_id=user_id):
        raise NotFoundError(f"Document {document_id} does not exist.")
    link = session.get(ConversationDocument, (conversation_id, document_id))
    if link is None:
        session.add(ConversationDocument(conversation_id=conversation_id, document_id=document_id))


def owns_document(session: Session, *, document_id: int, user_id: int) -> bool:
    loaded = select(Document.id).where(Document.id == document_id, Document.user_id == user_id)
    used = (select(ConversationDocument.document_id).join(Conversation)
            .where(ConversationDocument.document_id == document_id, Conversation.user_id == user_id))
    return session.scalar(loaded) is not None or session.scalar(used) is not None


def detach(session: Session, *, conversation_id: int, document_id: int, user_id: int) -> None:
    repo.get_conversation(session, conversation_id=conversation_id, user_id=user_id)
    session.execute(delete(ConversationDocument).where(
        ConversationDocument.conversation_id == conversation_id,
        ConversationDocument.document_id == document_id))


def conversation_documents(session: Session, *, conversation_id: int) -> list[Document]:
    stmt = (select(Document).join(ConversationDocument,
                                  ConversationDocument.document_id == Document.id)
            .where(ConversationDocument.conversation_id == conversation_id).order_by(Document.id))
    return list(session.scalars(stmt))


def user_documents(session: Session, *, user_id: int) -> list[Document]:
    """Documents this user loaded, for reuse in another conversation."""
    return list(session.scalars(select(Document).where(Document.user_id == user_id)
                                .order_by(Document.id.desc())))


def chunks_of(session: Session, *, document_ids: Sequence[int]) -> list[Chunk]:
    if not document_ids:
        return []
    stmt = (select(Chunk).where(Chunk.document_id.in_(list(document_ids)))
            .order_by(Chunk.document_id, Chunk.idx))
    return list(session.scalars(stmt))


def chunks_by_id(session: Session, *, chunk_ids: Sequence[int]) -> list[Chunk]:
    if not chunk_ids:
        return []
    return list(session.scalars(select(Chunk).where(Chunk.id.in_(list(chunk_ids)))))


def store_embeddings(session: Session, *, document_id: int, vectors: Sequence[bytes]) -> None:
    chunks = chunks_of(session, document_ids=[document_id])
    for chunk, vector in zip(chunks, vectors, strict=True):
        chunk.embedding = vector
    session.execute(update(Document).where(Document.id == document_id).values(embedded=True))
