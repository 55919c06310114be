"""Database engine with the SQLite pragmas we rely on, sessions, and Alembic upgrade."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from chatlm.errors import StorageError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
BUSY_TIMEOUT_MS = 15000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine; for SQLite, creates the file's folder, guards its files (``guard_database_file``)
    and sets WAL, FULL sync, busy timeout, FKs."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        guard_database_file(path)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


_SQLITE_FILES = ("", "-wal", "-shm", "-journal")
_guarded: set[str] = set()
_guarded_names: set[str] = set()
_guard_lock = threading.Lock()
_hook_installed = False


def guard_database_file(path: Path) -> None:
    """From now on, refuse any ``open`` of this SQLite database's files by Python code in this process.

    SQLite holds POSIX advisory locks, and POSIX drops every lock a process holds on a file when the
    process closes *any* descriptor of that file. A second descriptor opened by Python (a crafted
    upload path, a copy, a hash) and closed again therefore leaves SQLite unlocked: the next other
    client to close takes the database for unused and deletes the WAL this process still writes to,
    and later commits vanish. SQLite's C library opens its files without Python's audit events, so
    SQLAlchemy is unaffected; everything else gets a ``PermissionError`` before a descriptor exists.
    """
    global _hook_installed
    real = os.path.realpath(path)
    with _guard_lock:
        _guarded.update(real + suffix for suffix in _SQLITE_FILES)
        _guarded_names.add(os.path.basename(real))
        if not _hook_installed:
            sys.addaudithook(_refuse_database_open)
            _hook_installed = True


def _refuse_database_open(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: cheap for every other file (a name test; a link is resolved first)."""
    if event != "open" or not args or isinstance(args[0], int) or args[0] is None:
        return
    try:
        text = os.fsdecode(args[0])
    except (TypeError, ValueError):
        return
    name = os.path.basename(text)
    if not any(name.startswith(n) for n in _guarded_names) and not os.path.islink(text):
        return
    if os.path.realpath(text) in _guarded:
        raise PermissionError(f"{name} is the app's database: only SQLAlchemy may open it.")


def lock(session: Session, name: str) -> None:
    """Hold a named lock of the database until this transaction ends, across processes and hosts:
    PostgreSQL's transaction-level advisory lock. SQLite needs none: it has one writer, and a
    transaction that read before another wrote cannot write (its snapshot is stale)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"chatlm:{name}".encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    factory = sessionmaker(engine, expire_on_commit=False)
    if engine.dialect.name == "sqlite":
        _gate_writes(factory, str(engine.url))
    return factory


WRITE_WAIT_S = 60.0
"""How long a write waits for the other writers of this process before it is refused as busy."""
_gates: dict[str, tuple[threading.Lock, dict[str, Any]]] = {}


def _gate_writes(factory: sessionmaker[Session], key: str) -> None:
    """Let one transaction per process write to a SQLite file at a time, in the order they came.

    SQLite has one writer; the others wait in its busy handler, which sleeps and polls, so with many
    threads a writer can lose every poll and get "database is locked" past any timeout (the writers
    benchmark saw 17 of 8000 writes refused, and waits of 19 s). Threads of this process therefore
    queue on a lock, taken at a transaction's first write (a flush with changes, or an ORM
    insert/update/delete) and released when that transaction ends; only other processes (the
    training worker, the CLI) still meet the busy handler. A transaction opened inside another on
    the same thread does not wait for its outer one (it never could); a plain lock rather than an
    RLock, because a generator handler may end its transaction on another thread.
    """
    gate, holder = _gates.setdefault(key, (threading.Lock(), {"thread": None}))

    def take(session: Session) -> None:
        if "writing" in session.info:
            return
        if holder["thread"] == threading.get_ident():  # this thread's outer transaction holds it
            session.info["writing"] = False
            return
        session.connection()  # hold a pooled connection first: the holder must never wait for one
        if not gate.acquire(timeout=WRITE_WAIT_S):
            raise StorageError("The database is busy (other writers took too long); nothing was saved. "
                               "Try again.")
        session.info["writing"], holder["thread"] = True, threading.get_ident()

    def on_flush(session: Session, _context: Any, _instances: Any) -> None:
        take(session)

    def on_execute(state: Any) -> None:
        if state.is_insert or state.is_update or state.is_delete:
            take(state.session)

    def on_end(session: Session, transaction: Any) -> None:
        if transaction.parent is not None or "writing" not in session.info:
            return
        if session.info.pop("writing"):
            holder["thread"] = None
            gate.release()

    event.listen(factory, "before_flush", on_flush)
    event.listen(factory, "do_orm_execute", on_execute)
    event.listen(factory, "after_transaction_end", on_end)


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
