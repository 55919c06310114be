"""A user's conversations as rows: list, search, open, rename, delete with Undo, settings, history
and ratings. Every method takes the acting user (an ``Actor``), and ``repo.get_conversation`` refuses anyone
else's conversation as a missing one. ``ChatService`` adds the turns that generate."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chatlm.chat import transcript
from chatlm.config import Settings
from chatlm.identity.accounts import Actor
from chatlm.store import repo
from chatlm.store.db import transaction
from chatlm.store.models import Conversation, Message

REMEMBERED = ("temperature", "top_p", "max_new_tokens", "model")
"""Settings a new chat takes from the user's latest one (remembered per user, on the server)."""


class Conversations:
    """The conversation rows of ``ChatService`` (its base): what needs the database, not the model."""

    settings: Settings
    sessions: sessionmaker[Session]

    def actor(self, name: str = repo.LOCAL_USER) -> Actor:
        """The named user as an actor, creating the row on first use: for the shell and the QA
        harness, which act as a user they name (a request's actor comes from ``Identity``).
        Concurrent first requests may both insert: the loser's UNIQUE error means the row now
        exists, so it reads it instead of failing."""
        try:
            with transaction(self.sessions) as s:
                return Actor.of(repo.get_or_create_user(s, name=name))
        except IntegrityError:
            with transaction(self.sessions) as s:
                return Actor.of(repo.get_or_create_user(s, name=name))

    def new_conversation(self, actor: Actor, *, system_prompt: str | None = None,
                         settings: dict[str, Any] | None = None) -> Conversation:
        with transaction(self.sessions) as s:
            return repo.create_conversation(
                s, user_id=actor.user_id, settings=settings or {},
                system_prompt=self.settings.system_prompt if system_prompt is None else system_prompt,
            )

    def conversations(self, actor: Actor, query: str = "") -> list[Conversation]:
        """The user's conversations, newest first (``query``: those whose title or text has it).
        Deletes whose Undo window has passed are purged here, on the user's own next look."""
        with transaction(self.sessions) as s:
            repo.purge_deleted(s, user_id=actor.user_id)
            return repo.list_conversations(s, user_id=actor.user_id, query=query)

    def remembered(self, actor: Actor) -> tuple[str | None, dict[str, Any]]:
        """The system prompt and settings of the user's latest conversation: what a new chat starts
        with (None, {} for a first chat: the server's defaults)."""
        with transaction(self.sessions) as s:
            latest = next(iter(repo.list_conversations(s, user_id=actor.user_id, limit=1)), None)
            if latest is None:
                return None, {}
            return latest.system_prompt, {k: latest.settings[k] for k in REMEMBERED if k in latest.settings}

    def conversation(self, actor: Actor, conversation_id: int) -> Conversation:
        with transaction(self.sessions) as s:
            return repo.get_conversation(s, conversation_id=conversation_id, user_id=actor.user_id)

    def transcript(self, actor: Actor, conversation_id: int) -> tuple[str, str]:
        """(file name, Markdown) of the chat as shown, with its ratings: the sidebar's Export and
        ``chatlm chats export``."""
        with transaction(self.sessions) as s:
            conv = repo.get_conversation(s, conversation_id=conversation_id, user_id=actor.user_id)
            title, system_prompt = conv.title, conv.system_prompt
        rows = self.history(actor, conversation_id)
        return transcript.filename(title, conversation_id), transcript.markdown(title, system_prompt, rows)

    def rename(self, actor: Actor, conversation_id: int, title: str) -> None:
        with transaction(self.sessions) as s:
            repo.rename_conversation(s, conversation_id=conversation_id, user_id=actor.user_id,
                                     title=title)

    def discard(self, actor: Actor, conversation_id: int) -> None:
        """Remove a chat made for a request that was then refused (no Undo: it was never shown)."""
        with transaction(self.sessions) as s:
            repo.discard_conversation(s, conversation_id=conversation_id, user_id=actor.user_id)

    def purge_deleted(self) -> int:
        """Remove every user's deletes whose Undo window has passed."""
        with transaction(self.sessions) as s:
            return repo.purge_deleted(s)

    def last_deleted(self, actor: Actor) -> tuple[int, str] | None:
        """(id, title) of the user's latest delete that can still be undone, or None."""
        with transaction(self.sessions) as s:
            conv = repo.last_deleted(s, user_id=actor.user_id)
            return (conv.id, conv.title) if conv is not None else None

    def restore(self, actor: Actor, conversation_id: int) -> Conversation:
        """Undo a delete (refused once it was purged)."""
        with transaction(self.sessions) as s:
            return repo.restore_conversation(s, conversation_id=conversation_id, user_id=actor.user_id)

    def update_settings(self, actor: Actor, conversation_id: int, *, system_prompt: str,
                        settings: dict[str, Any]) -> None:
        with transaction(self.sessions) as s:
            conv = repo.get_conversation(s, conversation_id=conversation_id, user_id=actor.user_id)
            conv.system_prompt, conv.settings = system_prompt, dict(settings)

    def set_excluded(self, actor: Actor, conversation_id: int, excluded: bool) -> None:
        """Mark a conversation as not to be used for training (or allow it again)."""
        with transaction(self.sessions) as s:
            conv = repo.get_conversation(s, conversation_id=conversation_id, user_id=actor.user_id)
            conv.exclude_from_training = bool(excluded)

    def history(self, actor: Actor, conversation_id: int) -> list[tuple[Message, int | None]]:
        """The visible branch with this user's rating of each message."""
        with transaction(self.sessions) as s:
            conv = repo.get_conversation(s, conversation_id=conversation_id, user_id=actor.user_id)
            path = repo.branch(s, conversation=conv)
            rated = repo.ratings_for(s, message_ids=[m.id for m in path], user_id=actor.user_id)
            return [(m, rated.get(m.id)) for m in path]

    def rating_detail(self, actor: Actor, message_id: int) -> dict[str, Any] | None:
        """This user's current rating of a message with its comment, reason and better answer."""
        with transaction(self.sessions) as s:
            repo.get_message(s, message_id=message_id, user_id=actor.user_id)
            rating = repo.get_rating(s, message_id=message_id, user_id=actor.user_id)
            if rating is None:
                return None
            return {"value": rating.value, "reason": rating.reason, "comment": rating.comment,
                    "better_answer": rating.better_answer}

    def rate(self, actor: Actor, message_id: int, value: int | None, **extra: Any) -> None:
        with transaction(self.sessions) as s:
            repo.set_rating(s, message_id=message_id, user_id=actor.user_id, value=value, **extra)
