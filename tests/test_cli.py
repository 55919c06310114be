"""The CLI as a user runs it: a real process, the real model, a real database file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import MODEL_CACHE, REPO


def run(args: list[str], data_dir, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "CHATLM_DATA_DIR": str(data_dir), **env}
    return subprocess.run([sys.executable, "-m", "chatlm", *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=300)


@pytest.mark.slow  # runs the command line in a subprocess
def test_db_upgrade_creates_the_database(tmp_path) -> None:
    out = run(["db", "upgrade"], tmp_path / "d")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "chatlm.db").is_file()


@pytest.mark.slow
def test_ask_streams_and_stores(tmp_path, bundled) -> None:
    data = tmp_path / "d"
    (data / "models").mkdir(parents=True)
    # reuse the session's safetensors copy of the bundled model instead of dequantising again
    for entry in (MODEL_CACHE / "models").iterdir():
        (data / "models" / entry.name).symlink_to(entry)
    out = run(["ask", "What is the capital of France?", "--max-new-tokens", "20"], data)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    with sqlite3.connect(data / "chatlm.db") as conn:
        stored = conn.execute("SELECT role, content FROM messages ORDER BY id").fetchall()
    assert stored[0] == ("user", "What is the capital of France?")
    assert stored[1][0] == "assistant" and "Paris" in stored[1][1]


@pytest.mark.slow  # runs the command line in a subprocess
def test_bad_setting_is_a_clear_error(tmp_path) -> None:
    out = run(["db", "upgrade"], tmp_path, CHATLM_PORT="99999")
    assert out.returncode == 2
    assert "CHATLM_PORT" in out.stderr


@pytest.mark.slow  # runs the command line in a subprocess
def test_adapters_rollback_refuses_an_adapter_whose_files_are_gone(tmp_path) -> None:
    """`adapters rollback` checks the files of the adapter it goes back to, as `activate` does."""
    from chatlm.store import db, registry

    data = tmp_path / "d"
    url = f"sqlite:///{data / 'chatlm.db'}"
    db.upgrade(url)
    sessions = db.make_sessionmaker(db.make_engine(url))
    with db.transaction(sessions) as s:
        for name in ("chatlm-v1", "chatlm-v2"):
            registry.register(s, name=name, base_model="m", path=str(tmp_path / name), method="sft",
                              dataset_hash="0")
    with db.transaction(sessions) as s:
        registry.activate(s, name="chatlm-v1")
    with db.transaction(sessions) as s:
        registry.activate(s, name="chatlm-v2")
    out = run(["adapters", "rollback"], data)  # chatlm-v1's folder never existed
    assert out.returncode != 0 and "No adapter directory" in out.stderr, out.stderr
    with db.transaction(sessions) as s:
        assert registry.active_adapter(s).name == "chatlm-v2"  # nothing changed


@pytest.mark.slow  # seven processes (each imports the app): out of the fast tier
def test_chats_list_search_export_delete_and_undo_from_the_shell(tmp_path) -> None:
    from chatlm import compose
    from chatlm.config import Settings
    from chatlm.store import repo
    from chatlm.store.db import transaction

    data = tmp_path / "d"
    services = compose.build(Settings.from_env({}, data_dir=data), load_model=False)
    try:
        chat = services.chat
        me = chat.actor()
        bob = services.accounts.add_user(None, "bob", "bob's long password")
        ids = {}
        for uid, title, text in ((me, "Trip to Rouen", "Where to eat in Rouen?"), (me, "Dinner", "A soup"),
                                 (bob, "Bob's plans", "Bob's secret")):
            conv = chat.new_conversation(uid)
            chat.rename(uid, conv.id, title)
            with transaction(services.sessions) as s:
                repo.add_message(s, conversation_id=conv.id, role="user", content=text)
            ids[title] = conv.id
    finally:
        services.close()

    listed = run(["chats", "list"], data)
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[2] for line in listed.stdout.splitlines()] == ["Dinner", "Trip to Rouen"]
    assert run(["chats", "list", "--search", "eat in"], data).stdout.split("\t")[2].strip() == "Trip to Rouen"
    exported = run(["chats", "export", str(ids["Trip to Rouen"])], data)
    assert exported.stdout.startswith("# Trip to Rouen") and "Where to eat in Rouen?" in exported.stdout
    stranger = run(["chats", "export", str(ids["Bob's plans"])], data)  # bob's chat, asked as the local user
    assert stranger.returncode == 2 and "does not exist" in stranger.stderr and "secret" not in stranger.stdout
    assert "Bob's plans" in run(["chats", "list", "--user", "bob"], data).stdout

    deleted = run(["chats", "delete", str(ids["Dinner"])], data)
    assert deleted.returncode == 0 and "chats undo" in deleted.stdout
    assert "Dinner" not in run(["chats", "list"], data).stdout
    assert run(["chats", "undo", str(ids["Dinner"])], data).returncode == 0
    assert "Dinner" in run(["chats", "list"], data).stdout
