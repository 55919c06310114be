"""Data functions: the session first, keyword-only arguments, ownership checked on every read."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session

from chatlm.errors import InputError, NotFoundError
from chatlm.store.models import Conversation, Message, Rating, RatingEvent, User, utcnow

LOCAL_USER = "local"
MAX_COMMENT_CHARS = 4000
MAX_BETTER_ANSWER_CHARS = 20000
RATING_REASONS = {
    "wrong": "Wrong or made up",
    "not_grounded": "Not what the loaded text says",
    "too_long": "Too long or rambling",
    "unsafe": "Unsafe or rude",
    "other": "Something else",
}
"""Why an answer got a 👎: the stored id and the words a user picks it by. A 👍 takes none."""
EMPTY_BRANCH = 0
"""``active_leaf_id`` of a conversation whose next message starts a new root (editing the first one)."""
UNDO_WINDOW = timedelta(minutes=10)
"""How long a deleted conversation can be brought back (Undo) before it is purged for good."""


def reason_for(value: int | None, reason: str | None) -> str | None:
    """The reason a rating of ``value`` keeps: a reason explains a 👎 only. The one rule: the chat's
    thumbs and the details form drop it for 👍; ``set_rating`` refuses a 👍 that sends one."""
    return reason if value == -1 else None


def get_or_create_user(session: Session, *, name: str = LOCAL_USER) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name, is_admin=(name == LOCAL_USER))
        session.add(user)
        session.flush()
    return user


def create_conversation(
    session: Session, *, user_id: int, system_prompt: str = "", settings: dict[str, Any] | None = None,
    title: str = "New chat",
) -> Conversation:
    conv = Conversation(user_id=user_id, system_prompt=system_prompt, settings=settings or {},
                        title=title)
    session.add(conv)
    session.flush()
    return conv


def list_conversations(session: Session, *, user_id: int, query: str = "",
                       limit: int | None = None) -> list[Conversation]:
    """The user's conversations, newest first (the first ``limit``); with ``query``, those whose
    title or any message contains it (case-insensitive; ``%`` and ``_`` match themselves)."""
    stmt = (select(Conversation).where(Conversation.user_id == user_id, Conversation.deleted_at.is_(None))
            .order_by(Conversation.updated_at.desc(), Conversation.id.desc()))
    words = " ".join(query.split())
    if words:
        pattern = "%" + words.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        in_text = exists().where(Message.conversation_id == Conversation.id,
                                 Message.role != "system", Message.content.ilike(pattern, escape="\\"))
        stmt = stmt.where(or_(Conversation.title.ilike(pattern, escape="\\"), in_text))
    return list(session.scalars(stmt.limit(limit)))


def get_conversation(session: Session, *, conversation_id: int, user_id: int) -> Conversation:
    """The user's conversation; someone else's is answered exactly as a missing one, so that ids
    tried by a stranger tell them nothing (not even that the conversation exists)."""
    conv = session.get(Conversation, conversation_id)
    if conv is None or conv.user_id != user_id or conv.deleted_at is not None:
        raise NotFoundError(f"Conversation {conversation_id} does not exist.")
    return conv


def rename_conversation(session: Session, *, conversation_id: int, user_id: int,
                        title: str) -> Conversation:
    title = " ".join(title.split())
    if not title:
        raise InputError("A conversation title cannot be empty.")
    conv = get_conversation(session, conversation_id=conversation_id, user_id=user_id)
    conv.title = title[:200]
    return conv


def delete_conversation(session: Session, *, conversation_id: int, user_id: int) -> Conversation:
    """Delete for the user at once (gone from lists, access and training data); the rows stay
    for ``UNDO_WINDOW`` so that Undo can bring them back, then ``purge_deleted`` removes them."""
    conv = get_conversation(session, conversation_id=conversation_id, user_id=user_id)
    conv.deleted_at = utcnow()
    return conv


def discard_conversation(session: Session, *, conversation_id: int, user_id: int) -> None:
    """Remove at once a conversation the user never saw made (a refused first message, a refused
    text loaded into a new chat): there is nothing to undo."""
    session.delete(get_conversation(session, conversation_id=conversation_id, user_id=user_id))


def restore_conversation(session: Session, *, conversation_id: int, user_id: int) -> Conversation:
    """Undo a delete that has not been purged yet."""
    conv = session.get(Conversation, conversation_id)
    if conv is None or conv.user_id != user_id or conv.deleted_at is None:
        raise NotFoundError("That conversation can no longer be brought back.")
    conv.deleted_at = None
    return conv


def last_deleted(session: Session, *, user_id: int) -> Conversation | None:
    """The user's latest delete that Undo can still bring back (a page reloaded after a delete
    offers it again)."""
    return session.scalar(select(Conversation).where(
        Conversation.user_id == user_id, Conversation.deleted_at.is_not(None),
        Conversation.deleted_at >= utcnow() - UNDO_WINDOW).order_by(Conversation.deleted_at.desc()).limit(1))


def purge_deleted(session: Session, *, user_id: int | None = None) -> int:
    """Remove deleted conversations whose Undo window has passed (of one user, or of everyone);
    their messages, ratings and links go with them (ON DELETE CASCADE)."""
    stmt = delete(Conversation).where(Conversation.deleted_at.is_not(None),
                                      Conversation.deleted_at < utcnow() - UNDO_WINDOW)
    if user_id is not None:
        stmt = stmt.where(Conversation.user_id == user_id)
    return int(session.execute(stmt, execution_options={"synchronize_session": False}).rowcount or 0)  # type: ignore[attr-defined]


def add_message(
    session: Session, *, conversation_id: int, role: str, content: str,
    parent_id: int | None = None, **fields: Any,
) -> Message:
    """Append a message and make it the end of the conversation's visible branch."""
    msg = Message(conversation_id=conversation_id, role=role, content=content,
                  parent_id=parent_id, **fields)
    session.add(msg)
    session.flush()
    conv = session.get(Conversation, conversation_id)
    assert conv is not None
    conv.active_leaf_id = msg.id
    conv.updated_at = utcnow()
    return msg


def update_message(session: Session, *, message_id: int, **fields: Any) -> Message | None:
    """Overwrite fields of a stored message (a streaming answer's checkpoint or its end); None when
    it is gone (its conversation was deleted meanwhile)."""
    msg = session.get(Message, message_id)
    if msg is None:
        return None
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def mark_interrupted(session: Session) -> int:
    """Answers left ``pending`` by a process that died: say so (the text checkpointed so far stays)."""
    result = session.execute(update(Message).where(Message.status == "pending").values(status="interrupted"))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def get_message(session: Session, *, message_id: int, user_id: int) -> Message:
    msg = session.get(Message, message_id)
    if msg is None:
        raise NotFoundError(f"Message {message_id} does not exist.")
    get_conversation(session, conversation_id=msg.conversation_id, user_id=user_id)
    return msg


def branch(session: Session, *, conversation: Conversation) -> list[Message]:
    """The messages on screen: from the root to the active leaf, following parents."""
    if conversation.active_leaf_id == EMPTY_BRANCH:
        return []
    by_id = {m.id: m for m in conversation.messages}
    path: list[Message] = []
    node = by_id.get(conversation.active_leaf_id or -1)
    if node is None and conversation.messages:
        node = conversation.messages[-1]
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id is not None else None
    return path[::-1]


def siblings(session: Session, *, message: Message) -> list[Message]:
    """Alternatives of the same turn (same parent, same role), oldest first."""
    stmt = select(Message).where(
        Message.conversation_id == message.conversation_id,
        Message.role == message.role,
        (Message.parent_id == message.parent_id) if message.parent_id is not None
        else Message.parent_id.is_(None),
    ).order_by(Message.id)
    return list(session.scalars(stmt))


def set_rating(
    session: Session, *, message_id: int, user_id: int, value: int | None,
    comment: str | None = None, reason: str | None = None, better_answer: str | None = None,
) -> Rating | None:
    """Rate an answer +1/-1, change it, or withdraw it (``value=None``); history is kept."""
    if value not in (1, -1, None):
        raise InputError("A rating is +1 (thumbs up) or -1 (thumbs down).")
    if comment and len(comment) > MAX_COMMENT_CHARS:
        raise InputError(f"A comment may have at most {MAX_COMMENT_CHARS} characters.")
    if better_answer and len(better_answer) > MAX_BETTER_ANSWER_CHARS:
        raise InputError(f"A better answer may have at most {MAX_BETTER_ANSWER_CHARS} characters.")
    if reason is not None and reason not in RATING_REASONS:
        raise InputError(f"The reason must be one of: {', '.join(RATING_REASONS)}.")
    if reason is not None and reason_for(value, reason) is None:
        raise InputError(f"“{RATING_REASONS[reason]}” is a reason for 👎: with 👍 leave the reason "
                         "empty (say what you liked in the comment).")
    msg = get_message(session, message_id=message_id, user_id=user_id)
    if msg.role != "assistant":
        raise InputError("Only answers can be rated.")
    session.add(RatingEvent(message_id=message_id, user_id=user_id, value=value, comment=comment,
                            reason=reason, better_answer=better_answer))
    rating = get_rating(session, message_id=message_id, user_id=user_id)
    if value is None:
        if rating is not None:
            session.delete(rating)
        return None
    if rating is None:
        rating = Rating(message_id=message_id, user_id=user_id, value=value)
        session.add(rating)
    rating.value, rating.comment, rating.reason = value, comment, reason
    rating.better_answer = better_answer
    rating.updated_at = utcnow()
    session.flush()
    return rating


def get_rating(session: Session, *, message_id: int, user_id: int) -> Rating | None:
    return session.scalar(select(Rating).where(Rating.message_id == message_id, Rating.user_id == user_id))


def ratings_for(session: Session, *, message_ids: Sequence[int], user_id: int) -> dict[int, int]:
    if not message_ids:
        return {}
    stmt = select(Rating.message_id, Rating.value).where(
        Rating.user_id == user_id, Rating.message_id.in_(list(message_ids))
    )
    return {mid: value for mid, value in session.execute(stmt)}



def latest_leaf(session: Session, *, message: Message) -> Message:
    """The newest message under ``message`` (following the newest child each time)."""
    node = message
    while True:
        child = session.scalar(select(Message).where(Message.parent_id == node.id)
                               .order_by(Message.id.desc()).limit(1))
        if child is None:
            return node
        node = child
