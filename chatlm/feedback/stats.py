"""What the Feedback tab shows: rating counts by label, adapter and day, and a table of rated
answers with their comments."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from chatlm.store.models import Conversation, Message, Rating, User
from chatlm.store.repo import RATING_REASONS


@dataclass(frozen=True)
class RatedRow:
    day: date
    adapter: str
    label: str
    question: str
    answer: str
    reason: str
    comment: str
    better_answer: str
    user: str
    message_id: int


def rated_rows(session: Session, *, label: str | None = None, adapter: str | None = None,
               text: str | None = None, user_id: int | None = None) -> list[RatedRow]:
    """Current ratings, newest first, optionally filtered (label 'like'/'dislike', adapter, text,
    the rating user)."""
    parent = Message.__table__.alias("parent")
    stmt = (select(Rating, Message, User.name, parent.c.content)
            .join(Message, Message.id == Rating.message_id)
            .join(User, User.id == Rating.user_id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .outerjoin(parent, parent.c.id == Message.parent_id)
            .where(Conversation.deleted_at.is_(None))
            .order_by(Rating.updated_at.desc(), Rating.id.desc()))
    if user_id is not None:
        stmt = stmt.where(Rating.user_id == user_id)
    rows = []
    for rating, msg, user, question in session.execute(stmt):
        row = RatedRow(day=rating.updated_at.date(), adapter=msg.adapter or "base",
                       label="like" if rating.value > 0 else "dislike", question=question or "",
                       answer=msg.content, reason=RATING_REASONS.get(rating.reason or "", rating.reason or ""),
                       comment=rating.comment or "",
                       better_answer=rating.better_answer or "", user=user, message_id=msg.id)
        if label and row.label != label:
            continue
        if adapter and row.adapter != adapter:
            continue
        if text and text.lower() not in " ".join((row.question, row.answer, row.comment)).lower():
            continue
        rows.append(row)
    return rows


def counts(rows: list[RatedRow]) -> list[dict[str, object]]:
    """Rows of (day, adapter, label, count) for the plot, in a stable order."""
    tally = Counter((r.day.isoformat(), r.adapter, r.label) for r in rows)
    return [{"day": d, "adapter": a, "label": lbl, "count": n}
            for (d, a, lbl), n in sorted(tally.items())]
