"""Every table, as typed SQLAlchemy 2 models. Alembic's migrations must match this file."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now; SQLite stores it as naive UTC text."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True, default=None)
    """argon2id hash; None for the local user, guests and Hugging Face accounts (no password)."""
    is_guest: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    session_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Carried in every session cookie; bumped by signing out, a new password or an admin, which
    ends every session made before (a saved cookie is refused from then on)."""


class ServerSecret(Base):
    """A secret the server made for itself (the session signing key when CHATLM_SECRET_KEY is not
    set): in the database, which only SQLAlchemy opens, never in a file a request could name."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SignInFailure(Base):
    """Wrong passwords in a row for a typed user name, whether or not an account has that name:
    one record for both, so the slow-down and the lockout never tell names apart."""

    __tablename__ = "sign_in_failures"

    name_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    """sha256 of the lowercased name as typed (never the name: a password typed there by mistake
    is not kept)."""
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, default=None)


class ApiKey(Base):
    """A per-user key for ``/v1``: only its sha256 is stored (the key itself is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    """The first characters of the key, to tell keys apart in a list."""
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, default=None)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200), default="New chat")
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Generation settings chosen for this conversation (temperature, top_p, max_new_tokens)."""
    exclude_from_training: Mapped[bool] = mapped_column(Boolean, default=False)
    active_leaf_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Last message of the branch on screen; no FK to avoid a cycle with messages."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    """Set by Delete: the conversation is gone for its user and for training, and can be brought
    back (Undo) until ``repo.UNDO_WINDOW`` has passed, when it is purged."""

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation", cascade="all, delete-orphan", passive_deletes=True,
        order_by="Message.id",
    )


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("role IN ('system', 'user', 'assistant')", name="role"),
        CheckConstraint("status IN ('complete', 'stopped', 'error', 'pending', 'interrupted')",
                        name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True, nullable=True
    )
    """The message this one answers or follows; a retry is a sibling with the same parent."""
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="complete")
    """``pending`` while an answer streams (its text checkpointed), then complete, stopped or error;
    ``interrupted`` when the server died before it ended."""
    model_id: Mapped[str | None] = mapped_column(String(300), nullable=True)
    adapter: Mapped[str | None] = mapped_column(String(200), nullable=True)
    generation_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prompt_messages: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    """The exact chat messages the model saw (system prompt, passages, trimmed history)."""
    sources: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    """Knowledge passages used for this answer: chunk ids, ranks and scores."""
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Rating(Base):
    """The current rating of a message by a user (one per user and message)."""

    __tablename__ = "ratings"
    __table_args__ = (
        UniqueConstraint("message_id", "user_id", name="uq_ratings_message_user"),
        CheckConstraint("value IN (-1, 1)", name="value"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    value: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    better_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RatingEvent(Base):
    """Every change to a rating, withdrawals included (value NULL), for the rating history."""

    __tablename__ = "rating_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    value: Mapped[int | None] = mapped_column(Integer, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    better_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Document(Base):
    """A loaded knowledge text, stored once per user and content hash (one user's copy never
    depends on, or tells of, another's)."""

    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("user_id", "sha256", name="uq_documents_user_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(300))
    mime: Mapped[str] = mapped_column(String(100), default="text/plain")
    text: Mapped[str] = mapped_column(Text)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    embedded: Mapped[bool] = mapped_column(Boolean, default=False)
    """True once every chunk has its dense embedding."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (Index("ix_chunks_document_idx", "document_id", "idx", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """float32 vector, L2-normalised, as raw bytes."""


class ConversationDocument(Base):
    __tablename__ = "conversation_documents"

    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AdapterVersion(Base):
    """A trained LoRA adapter (``name-vN``) in the data directory, with what made it."""

    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    base_model: Mapped[str] = mapped_column(String(300))
    parent: Mapped[str | None] = mapped_column(String(120), nullable=True)
    """Adapter this round started from; None means the base model."""
    path: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(16))
    dataset_hash: Mapped[str] = mapped_column(String(64))
    hyperparams: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TrainingRun(Base):
    """One training round; the worker process reports progress and its result here."""

    __tablename__ = "training_runs"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')", name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    method: Mapped[str] = mapped_column(String(16), default="auto")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """step, total_steps, loss history, tokens/s, seconds left."""
    adapter_name: Mapped[str | None] = mapped_column(String(120), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    """Where the worker runs: its pid is checked there; elsewhere its heartbeat tells."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
