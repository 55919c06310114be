"""Read rated answers and kept conversations out of the database for the record builders."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from chatlm.chat.prompts import NOT_FOUND, split_grounded
from chatlm.feedback.records import Conversation as ConvRecord
from chatlm.feedback.records import RatedAnswer, focus, with_passage
from chatlm.store import documents, repo
from chatlm.store.models import Conversation, Message, Rating, User

BASE = "base"
"""What ``--adapter`` calls answers of the base model."""


def rated_answers(session: Session, *, since: datetime | None = None, adapter: str | None = None,
                  user: str | None = None, guests: bool = True) -> list[RatedAnswer]:
    """One record per (answer, rating user); the prompt is what the model saw. ``guests`` False
    leaves out ratings by guests (visitors who never signed in)."""
    stmt = (select(Message, Rating, Conversation.exclude_from_training)
            .join(Rating, Rating.message_id == Message.id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .join(User, User.id == Rating.user_id)
            .where(Message.role == "assistant", Message.prompt_messages.is_not(None),
                   Conversation.deleted_at.is_(None))
            .order_by(Message.id, Rating.id))
    if since is not None:
        stmt = stmt.where(Message.created_at >= since)
    if adapter is not None:
        stmt = stmt.where(Message.adapter.is_(None) if adapter == BASE else Message.adapter == adapter)
    if user is not None:
        stmt = stmt.where(User.name == user)
    if not guests:
        stmt = stmt.where(User.is_guest.is_(False))
    return [_rated(session, msg, rating, excluded) for msg, rating, excluded in session.execute(stmt)]


def _rated(session: Session, msg: Message, rating: Rating, excluded: bool) -> RatedAnswer:
    """An extractive answer trains as what the model wrote (the span, or the decline when the reply
    declined) on the passages the chat quoted, as the chat will quote them when the question comes
    again (``bench/corrections.py knowledge``: 28 of 50 corrections learnt, against 19 on the one
    passage holding each). A free-form answer about a loaded text (stored before answers were
    extractive, or by another model) trains on one passage (``records.focus``): the one holding the
    user's correction, else the best-ranked one, so old ratings' long prompts train within a
    round's budget. A correction of an extractive answer that none of its passages holds trains
    with the chat's passage that does hold it in place of the last (``records.with_passage``), and
    the chat reads that question again from those passages (``chatlm.adapters.scope``). Any other
    answer trains as stored."""
    prompt = tuple((m["role"], m["content"]) for m in msg.prompt_messages or [])
    answer = msg.content
    extractive = bool((msg.generation_params or {}).get("extractive")) and msg.status == "complete"
    if extractive:
        answer = msg.generation_params.get("span") or NOT_FOUND
    grounded = bool(prompt) and prompt[-1][0] == "user" and split_grounded(prompt[-1][1]) is not None
    if grounded and not extractive:
        prompt = focus(prompt, [rating.better_answer or "", answer])
    elif extractive and rating.better_answer and rating.better_answer.strip() != NOT_FOUND:
        prompt = with_passage(prompt, rating.better_answer, lambda: _chat_texts(session, msg.conversation_id))
    return RatedAnswer(message_id=msg.id, conversation_id=msg.conversation_id, parent_id=msg.parent_id,
                       prompt=prompt, answer=answer, rating=rating.value,
                       better_answer=rating.better_answer, excluded=excluded, extractive=extractive,
                       knowledge=extractive or grounded)


def _chat_texts(session: Session, conversation_id: int) -> list[tuple[str, str]]:
    """``(document, chunk text)`` of every passage of the chat's documents."""
    docs = documents.conversation_documents(session, conversation_id=conversation_id)
    names = {d.id: d.name for d in docs}
    return [(names[c.document_id], c.text) for c in documents.chunks_of(session, document_ids=list(names))]


def conversations(session: Session, *, since: datetime | None = None,
                  user: str | None = None) -> list[ConvRecord]:
    """Every conversation's visible branch with its system prompt (excluded ones flagged)."""
    stmt = (select(Conversation).join(User, User.id == Conversation.user_id)
            .where(Conversation.deleted_at.is_(None)).order_by(Conversation.id))
    if since is not None:
        stmt = stmt.where(Conversation.updated_at >= since)
    if user is not None:
        stmt = stmt.where(User.name == user)
    out: list[ConvRecord] = []
    for conv in session.scalars(stmt):
        path = [(m.role, m.content) for m in repo.branch(session, conversation=conv) if m.content]
        if conv.system_prompt.strip() and path:
            path.insert(0, ("system", conv.system_prompt))
        out.append(ConvRecord(conversation_id=conv.id, messages=tuple(path),
                              excluded=conv.exclude_from_training))
    return out
