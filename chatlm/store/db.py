"""Database engine with the SQLite pragmas we rely on, sessions, and Alembic upgrade."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from chatlm.errors import StorageError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
BUSY_TIMEOUT_MS = 5000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine; for SQLite, creates the file's folder and sets WAL, FULL sync, busy timeout, FKs."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and turns lock/disk errors into a clear StorageError."""
    session = factory()
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise StorageError(_storage_message(exc)) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _storage_message(exc: OperationalError) -> str:
    text = str(exc.orig).lower()
    if "locked" in text or "busy" in text:
        return "The database is busy (locked by another writer); nothing was saved. Try again."
    if "full" in text or "disk" in text:
        return "The database disk is full; nothing was saved. Free some space and try again."
    if "readonly" in text or "read-only" in text:
        return "The database is read-only; nothing was saved."
    return f"The database refused the write ({exc.orig}); nothing was saved."


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creates the file when missing)."""
    from alembic import command

    make_engine(url).dispose()  # creates the folder
    command.upgrade(alembic_config(url), revision)
