"""Storage on a real SQLite file and a real PostgreSQL server: migrations, no drift, durability,
ratings, ownership (SQLite's pragmas, its write gate and its batch migrations on SQLite alone)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from chatlm.errors import InputError, NotFoundError
from chatlm.store import db, repo
from chatlm.store.models import User


@pytest.fixture
def url(database_url: str) -> str:
    db.upgrade(database_url)
    return database_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sub' / 'chatlm.db'}"
    db.upgrade(url)
    return url


def test_migrates_empty_to_head_without_drift(url: str) -> None:
    from alembic import command

    engine = db.make_engine(url)
    tables = set(inspect(engine).get_table_names())
    assert {"users", "conversations", "messages", "ratings", "rating_events", "documents",
            "chunks", "conversation_documents"} <= tables
    command.check(db.alembic_config(url))  # raises if models and migrations differ


def test_pragmas(sqlite_url: str) -> None:
    with db.make_engine(sqlite_url).connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == db.BUSY_TIMEOUT_MS


def test_messages_and_ratings_survive_reopening(url: str) -> None:
    sessions = db.make_sessionmaker(db.make_engine(url))
    with db.transaction(sessions) as s:
        uid = repo.get_or_create_user(s).id
        conv = repo.create_conversation(s, user_id=uid, system_prompt="sys")
        q = repo.add_message(s, conversation_id=conv.id, role="user", content="hi")
        a = repo.add_message(s, conversation_id=conv.id, role="assistant", content="hello",
                             parent_id=q.id, status="stopped")
        repo.set_rating(s, message_id=a.id, user_id=uid, value=1)
    sessions.kw["bind"].dispose()

    reopened = db.make_sessionmaker(db.make_engine(url))
    with db.transaction(reopened) as s:
        conv2 = repo.list_conversations(s, user_id=uid)[0]
        path = repo.branch(s, conversation=conv2)
        assert [(m.role, m.content, m.status) for m in path] == [
            ("user", "hi", "complete"), ("assistant", "hello", "stopped")]
        assert repo.ratings_for(s, message_ids=[a.id], user_id=uid) == {a.id: 1}


def test_one_rating_per_user_changeable_and_withdrawable(url: str) -> None:
    sessions = db.make_sessionmaker(db.make_engine(url))
    with db.transaction(sessions) as s:
        uid = repo.get_or_create_user(s).id
        conv = repo.create_conversation(s, user_id=uid)
        q = repo.add_message(s, conversation_id=conv.id, role="user", content="q")
        a = repo.add_message(s, conversation_id=conv.id, role="assistant", content="a", parent_id=q.id)
        repo.set_rating(s, message_id=a.id, user_id=uid, value=1)
        repo.set_rating(s, message_id=a.id, user_id=uid, value=-1, comment="wrong year",
                        reason="wrong")
        assert repo.ratings_for(s, message_ids=[a.id], user_id=uid) == {a.id: -1}
        assert s.execute(text("SELECT count(*) FROM ratings")).scalar() == 1
        repo.set_rating(s, message_id=a.id, user_id=uid, value=None)
        assert repo.ratings_for(s, message_ids=[a.id], user_id=uid) == {}
        assert s.execute(text("SELECT count(*) FROM rating_events")).scalar() == 3
        with pytest.raises(InputError, match="Only answers"):
            repo.set_rating(s, message_id=q.id, user_id=uid, value=1)
        with pytest.raises(NotFoundError):
            repo.set_rating(s, message_id=9999, user_id=uid, value=1)
        with pytest.raises(InputError, match="at most"):
            repo.set_rating(s, message_id=a.id, user_id=uid, value=1, comment="x" * 10**6)


def test_other_users_cannot_read_or_rate(url: str) -> None:
    sessions = db.make_sessionmaker(db.make_engine(url))
    with db.transaction(sessions) as s:
        owner = repo.get_or_create_user(s).id
        other = repo.get_or_create_user(s, name="mallory").id
        conv = repo.create_conversation(s, user_id=owner)
        q = repo.add_message(s, conversation_id=conv.id, role="user", content="q")
        a = repo.add_message(s, conversation_id=conv.id, role="assistant", content="a", parent_id=q.id)
        with pytest.raises(NotFoundError, match="does not exist"):  # the same words as a missing one
            repo.get_conversation(s, conversation_id=conv.id, user_id=other)
        with pytest.raises(NotFoundError):
            repo.set_rating(s, message_id=a.id, user_id=other, value=1)
        assert repo.list_conversations(s, user_id=other) == []


def test_a_deleted_conversation_is_gone_at_once_can_be_undone_and_is_purged_after_the_window(url: str) -> None:
    from chatlm.feedback.load import conversations as training_conversations
    from chatlm.store.models import Conversation

    sessions = db.make_sessionmaker(db.make_engine(url))
    with db.transaction(sessions) as s:
        uid = repo.get_or_create_user(s).id
        conv = repo.create_conversation(s, user_id=uid)
        repo.add_message(s, conversation_id=conv.id, role="user", content="q")
    with db.transaction(sessions) as s:
        repo.delete_conversation(s, conversation_id=conv.id, user_id=uid)
    with db.transaction(sessions) as s:  # gone for its user and for training at once
        assert repo.list_conversations(s, user_id=uid) == []
        with pytest.raises(NotFoundError):
            repo.get_conversation(s, conversation_id=conv.id, user_id=uid)
        assert training_conversations(s) == []
        assert repo.purge_deleted(s) == 0  # within the Undo window the rows stay
    with db.transaction(sessions) as s:
        repo.restore_conversation(s, conversation_id=conv.id, user_id=uid)
    with db.transaction(sessions) as s:
        assert [c.id for c in repo.list_conversations(s, user_id=uid)] == [conv.id]
        repo.delete_conversation(s, conversation_id=conv.id, user_id=uid)
        s.get(Conversation, conv.id).deleted_at -= repo.UNDO_WINDOW  # the window has passed
    with db.transaction(sessions) as s:
        assert repo.purge_deleted(s, user_id=uid) == 1
    with db.transaction(sessions) as s:
        assert s.execute(text("SELECT count(*) FROM messages")).scalar() == 0
        with pytest.raises(NotFoundError, match="no longer"):
            repo.restore_conversation(s, conversation_id=conv.id, user_id=uid)


def test_search_finds_chats_by_title_or_message_text_only_the_users_own(url: str) -> None:
    sessions = db.make_sessionmaker(db.make_engine(url))
    with db.transaction(sessions) as s:
        ann, bob = repo.get_or_create_user(s, name="ann").id, repo.get_or_create_user(s, name="bob").id
        trip = repo.create_conversation(s, user_id=ann, title="Trip to Rouen")
        recipe = repo.create_conversation(s, user_id=ann, title="Dinner")
        repo.add_message(s, conversation_id=recipe.id, role="user", content="A recipe with 100% butter_cream?")
        repo.create_conversation(s, user_id=bob, title="rouen too")
    with db.transaction(sessions) as s:
        def found(query: str, user: int = ann) -> list[int]:
            return [c.id for c in repo.list_conversations(s, user_id=user, query=query)]

        assert found("ROUEN") == [trip.id]  # case-insensitive, never another user's
        assert found("butter_cream") == [recipe.id]  # message text counts
        assert found("100%") == [recipe.id] and found("1_0") == [] and found("%") == [recipe.id]
        assert found("   ") == [recipe.id, trip.id]  # nothing typed: every chat, newest first


def test_upgrade_from_0002_keeps_messages_and_allows_interrupted(tmp_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError

    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0002")
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, name, is_admin, created_at) VALUES (1, 'local', 1, '2026-01-01')"))
        conn.execute(text("INSERT INTO conversations (id, user_id, title, system_prompt, settings, "
                          "exclude_from_training, created_at, updated_at) "
                          "VALUES (1, 1, 't', '', '{}', 0, '2026-01-01', '2026-01-01')"))
        conn.execute(text("INSERT INTO messages (id, conversation_id, role, content, status, "
                          "generation_params, created_at) VALUES (1, 1, 'assistant', 'half an ans', "
                          "'pending', '{}', '2026-01-01')"))
    engine.dispose()
    db.upgrade(url)
    sessions = db.make_sessionmaker(db.make_engine(url))
    with db.transaction(sessions) as s:
        assert repo.mark_interrupted(s) == 1
    with db.make_engine(url).begin() as conn:
        assert conn.execute(text("SELECT content, status FROM messages")).one() == ("half an ans", "interrupted")
    with pytest.raises(IntegrityError), db.make_engine(url).begin() as conn:
        conn.execute(text("UPDATE messages SET status = 'bogus'"))


def test_writers_of_one_process_queue_instead_of_failing_busy(sqlite_url: str, monkeypatch) -> None:
    """A write that waits longer than SQLite's busy timeout for another thread's write must still
    be saved (the threads queue on the process's write gate), and more writers than the connection
    pool holds must not deadlock on it."""
    import threading
    import time

    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 100)
    factory = db.make_sessionmaker(db.make_engine(sqlite_url))
    holding, errors = threading.Event(), []

    def slow_writer() -> None:
        with db.transaction(factory) as s:
            repo.get_or_create_user(s, name="slow")
            holding.set()
            time.sleep(1.0)  # ten busy timeouts with the write lock held

    def writer(name: str) -> None:
        try:
            with db.transaction(factory) as s:
                if name.endswith(("0", "2", "4", "6", "8")):  # its first statement is the write
                    s.add(User(name=name))
                else:  # reads first, so it holds a pooled connection while it waits to write
                    repo.get_or_create_user(s, name=name)
        except Exception as exc:
            errors.append(exc)

    slow = threading.Thread(target=slow_writer)
    slow.start()
    holding.wait(10)
    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(24)]  # pool: 5 + 10
    for t in threads:
        t.start()
    for t in threads + [slow]:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "writers deadlocked"
    assert errors == []
    with db.transaction(factory) as s:
        names = set(s.scalars(text("SELECT name FROM users")))
    assert names >= {"slow"} | {f"w{i}" for i in range(24)}


def test_every_migration_keeps_a_filled_database(tmp_path: Path) -> None:
    """A database filled through the app (users, chats, answers, ratings and their events, a loaded
    text with chunks, an adapter and a training run) goes down to 0002 and back up to head with every
    row kept. Batch mode rebuilds tables on SQLite; with foreign keys on, rebuilding ``messages``
    used to delete every rating through ON DELETE CASCADE."""
    from chatlm.chat.library import Library
    from chatlm.identity.accounts import Actor
    from chatlm.store import registry
    from tests.seeding import StubEmbedder, add_turn, seed_pairs

    url = f"sqlite:///{tmp_path / 'filled.db'}"
    db.upgrade(url)
    sessions = db.make_sessionmaker(db.make_engine(url))
    with db.transaction(sessions) as s:
        me = Actor.of(repo.get_or_create_user(s))
        uid = me.user_id
        other = repo.get_or_create_user(s, name="alice").id
        conv = repo.create_conversation(s, user_id=uid).id
    seed_pairs(sessions, uid, 3)
    add_turn(sessions, other, "Why?", [("Because.", -1, "Because it is.")])
    library = Library(sessions, embedder=StubEmbedder(), background=False)
    library.load(actor=me, conversation_id=conv, name="notes.txt", data=b"The office opened in 1987. " * 40)
    with db.transaction(sessions) as s:
        registry.register(s, name="chatlm-v1", base_model="m", path="/a", method="dpo", dataset_hash="0")
        registry.start_run(s, method="dpo", params={})
    tables = ["users", "conversations", "messages", "ratings", "rating_events", "documents", "chunks",
              "conversation_documents", "adapters", "training_runs"]

    def counts() -> dict[str, int]:
        with db.make_engine(url).connect() as conn:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}

    before = counts()
    assert all(before[t] > 0 for t in tables), before
    command = __import__("alembic.command", fromlist=["command"])
    command.downgrade(db.alembic_config(url), "0002")
    assert counts() == before
    db.upgrade(url)
    assert counts() == before
    with db.make_engine(url).connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA foreign_key_check")).fetchall() == []
