"""The composition root: settings -> database -> backend -> services.

The server, the CLI, the training worker and the QA harness all build what they need here, so the
wiring of database, backend and services exists once: a change to it (a new service, a pragma, the
registry followed at start) reaches every entry point alike.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from chatlm.config import Settings


def open_database(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """Migrate the database at ``url`` to head and open it (SQLAlchemy only, guarded files)."""
    from chatlm.store import db

    db.upgrade(url)
    engine = db.make_engine(url)
    return engine, db.make_sessionmaker(engine)


def sessions_for(settings: Settings) -> sessionmaker[Session]:
    return open_database(settings.db_url)[1]


def make_backend(settings: Settings) -> Any:
    """The local model, or a remote OpenAI-compatible server when CHATLM_BACKEND=openai."""
    if settings.backend == "openai":
        from chatlm.engine.remote import RemoteBackend

        return RemoteBackend.from_settings(settings)
    from chatlm.engine.local import LocalBackend

    return LocalBackend.from_settings(settings)


@dataclass
class Services:
    """One per concern, each taking the acting user where access matters."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    chat: Any
    """``ChatService``: conversations, turns, knowledge texts and adapter serving."""
    accounts: Any
    identity: Any
    training: Any
    feedback: Any

    def close(self) -> None:
        if self.chat.backend is not None:
            self.chat.backend.close()
        self.engine.dispose()


def build(settings: Settings, backend: Any = None, *, url: str | None = None, load_model: bool = True,
          embedder: Any = None, follow_registry: bool = True, reader: bool = True) -> Services:
    """Everything an entry point needs. ``url``: another database (the harness's and a round's
    temporary ones); ``load_model`` False leaves the backend out (retrieval-only runs);
    ``embedder`` replaces the library's (the harness caches query vectors); ``reader`` False leaves
    the reader adapter unloaded (``chatlm ask``: a new chat with no text never uses it)."""
    from chatlm.chat.library import Library
    from chatlm.chat.turns import ChatService
    from chatlm.feedback.reports import FeedbackService
    from chatlm.identity.accounts import AccountService
    from chatlm.identity.requests import Identity
    from chatlm.training.manage import TrainingService

    engine, sessions = open_database(url or settings.db_url)
    if backend is None and load_model:
        backend = make_backend(settings)
    library = Library(sessions, embedder=embedder) if embedder is not None else None
    chat = ChatService(settings, backend, sessions, library)
    if follow_registry and backend is not None:
        chat.adapters.follow_registry()  # serve the adapter the registry says is active (the base if it is broken)
        if reader:
            chat.adapters.ensure_reader()  # questions about a loaded text: the reader adapter (CHATLM_READER)
    accounts = AccountService(sessions)
    return Services(settings=settings, engine=engine, sessions=sessions, chat=chat, accounts=accounts,
                    identity=Identity(settings, accounts), training=TrainingService(chat),
                    feedback=FeedbackService(sessions))


@contextmanager
def scratch(settings: Settings, backend: Any = None, *, prefix: str, load_model: bool = True,
            embedder: Any = None) -> Iterator[Services]:
    """Services over a throwaway database in a temporary folder (``prefix``), the registry not
    followed: a reader round's retrieval. Afterwards the backend is closed, the embeddings finished
    and the database closed and removed."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        services = build(settings, backend, url=f"sqlite:///{Path(folder) / 'scratch.db'}", load_model=load_model,
                         embedder=embedder, follow_registry=False)
        try:
            yield services
        finally:
            if services.chat.backend is not None:
                services.chat.backend.close()
            services.chat.library.wait_for_embeddings(timeout=30)
            services.engine.dispose()
