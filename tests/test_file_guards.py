"""The two guards of issue 11 in isolation (fast tier): which upload paths a handler may read, and
that Python code in the app's process cannot open the database files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from chatlm.store import db


def test_python_code_cannot_open_the_database_files_but_sqlalchemy_works(tmp_path: Path) -> None:
    path = tmp_path / "data" / "chatlm.db"
    url = f"sqlite:///{path}"
    db.upgrade(url)
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (name, is_admin, created_at) VALUES ('a', 0, '2026-01-01')"))
    link = tmp_path / "innocent.txt"
    link.symlink_to(path)
    for target in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), link,
                   tmp_path / "data" / ".." / "data" / "chatlm.db"):
        with pytest.raises(PermissionError, match="database"):
            open(target, "rb")  # noqa: SIM115 - the attempt is the test
    with pytest.raises(PermissionError):
        shutil.copy(path, tmp_path / "copy.db")
    with pytest.raises(PermissionError):
        os.open(path, os.O_RDONLY)
    with engine.connect() as conn:  # the database itself is untouched and still served
        assert conn.execute(text("SELECT name FROM users")).scalar() == "a"
    (tmp_path / "data" / "notes.txt").write_text("other files open as usual")
    assert (tmp_path / "data" / "notes.txt").read_text() == "other files open as usual"


def test_only_files_in_the_upload_folder_are_received(uploads: Path, tmp_path: Path) -> None:
    import gradio as gr

    from chatlm.ui.uploads import NOT_RECEIVED, received_file

    (uploads / "abc").mkdir()
    good = uploads / "abc" / "notes.txt"
    good.write_text("uploaded")
    assert received_file(str(good)) == good.resolve()
    assert received_file(None) is None and received_file("") is None
    outside = tmp_path / "secret.txt"
    outside.write_text("not uploaded")
    (uploads / "abc" / "link.txt").symlink_to(outside)
    for path in (outside, uploads / "abc" / ".." / ".." / "secret.txt", uploads / "abc" / "link.txt",
                 uploads, uploads / "abc", uploads / "missing.txt", "http://127.0.0.1:1/x.txt",
                 "file:///etc/passwd", "/etc/passwd"):
        with pytest.raises(gr.Error) as refused:
            received_file(str(path))
        assert refused.value.message == NOT_RECEIVED


@pytest.mark.parametrize("make", ["uploaded_file", "upload_button"])
def test_the_file_inputs_refuse_before_gradio_reads_anything(uploads: Path, tmp_path: Path, make: str) -> None:
    """The Knowledge panel's file box and the message box's 📎 alike."""
    import gradio as gr

    from chatlm.ui import uploads as made

    outside = tmp_path / "secret.txt"
    outside.write_text("not uploaded")
    component = getattr(made, make)(label="x")
    with pytest.raises(gr.Error):
        component.move_resource_to_block_cache(str(outside))
    assert not any(p.is_file() for p in uploads.rglob("*"))  # nothing was copied into the cache
    (uploads / "u").mkdir()
    (uploads / "u" / "ok.txt").write_text("fine")
    assert component.move_resource_to_block_cache(str(uploads / "u" / "ok.txt")) == str(uploads / "u" / "ok.txt")


def test_the_request_check_alone(uploads: Path, tmp_path: Path) -> None:
    """The fast-tier view of the rule, for the shapes a request can take."""
    from chatlm.ui.guard import Refused, check_body, check_inputs

    (uploads / "u").mkdir()
    good = uploads / "u" / "ok.txt"
    good.write_text("uploaded")
    secret = tmp_path / "secret"
    secret.write_text("no")
    check_body(json.dumps({"data": ["hello", {"path": str(good), "meta": {"_type": "gradio.FileData"}}]}).encode())
    check_body(b"")
    for body in ({"data": [{"path": str(secret)}]}, {"data": [[[{"meta": {"_type": "gradio.FileData"}}]]]},
                 {"data": [{"path": str(uploads / "u" / ".." / ".." / "secret")}]},
                 {"data": [{"path": "http://127.0.0.1:1/x"}]}, {"data": [{"path": str(good) + "\x00"}]}):
        with pytest.raises(Refused):
            check_body(json.dumps(body).encode())
    with pytest.raises(Refused):
        check_body(b"[" * 100000 + b"]" * 100000)
    with pytest.raises(Refused):
        check_body(b"not json")

    class Field:
        receives_uploads = True

    ok = {"path": str(good)}
    check_inputs([ok, "text"], [Field(), object()])
    with pytest.raises(Refused):
        check_inputs(["text", ok], [Field(), object()])
    with pytest.raises(Refused):
        check_inputs([{"path": str(secret)}], [Field()])


def test_the_session_key_lives_in_the_database_not_in_a_file(tmp_path: Path) -> None:
    """No path a request names reaches the signing key: it is made in the database (which only
    SQLAlchemy opens), and a key an older version kept in ``<data dir>/secret_key`` moves there."""
    from chatlm import compose
    from chatlm.config import Settings

    data = tmp_path / "data"
    data.mkdir()
    (data / "secret_key").write_text("an older version's key, long enough to sign\n")
    settings = Settings.from_env({}, data_dir=data)
    services = compose.build(settings, load_model=False)
    try:
        identity = services.identity
        assert identity._secret() == "an older version's key, long enough to sign"
        assert not (data / "secret_key").exists()
        fresh = compose.build(settings, load_model=False)  # a restart, or another front end: same key
        try:
            assert fresh.identity._secret() == identity._secret()
        finally:
            fresh.close()
    finally:
        services.close()
    other = Settings.from_env({}, data_dir=tmp_path / "other")
    made = compose.build(other, load_model=False)
    try:
        key = made.identity._secret()
        assert len(key) >= 40 and not (tmp_path / "other" / "secret_key").exists()
        files = [p for p in (tmp_path / "other").rglob("*") if p.is_file() and not p.name.startswith("chatlm.db")]
        assert all(key not in p.read_text(errors="ignore") for p in files)
    finally:
        made.close()
