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


def test_bad_setting_is_a_clear_error(tmp_path) -> None:
    out = run(["db", "upgrade"], tmp_path, CHATLM_PORT="99999")
    assert out.returncode == 2
    assert "CHATLM_PORT" in out.stderr


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
