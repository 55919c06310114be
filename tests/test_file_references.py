"""Issue 22's critical attack replayed: a ``FileData`` reference typed into any input of any event.

Gradio copies a file named in a request's ``FileData`` into its cache before a handler runs, and
refuses nothing on an app that never launched (ours is mounted). These tests send such references
to every event (``/gradio_api/queue/join`` by ``fn_index``) and every named endpoint (``call/``,
``call/v2/``, ``run/``, ``api/``) in every argument, as a guest, as a signed-in user and with no
cookie, for ``/etc/passwd``, ``/proc/self/environ`` and the server's own secrets, and check that
no answer names a copy, the upload folder holds none, and ``/gradio_api/file=`` serves nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatlm.identity.requests import GUEST_COOKIE, SESSION_COOKIE
from tests.conftest import ANN

pytestmark = pytest.mark.slow


@pytest.fixture
def server(uploads: Path, request: pytest.FixtureRequest):
    return request.getfixturevalue("accounts_server")  # started after GRADIO_TEMP_DIR is set


def identities(server) -> dict[str, dict[str, str]]:
    """Cookies of each kind of caller: a guest the server issued, ann signed in, and nobody."""
    page = httpx.get(server.url + "/", headers={"Accept": "text/html"}, follow_redirects=False, timeout=30)
    guest = page.cookies.get(GUEST_COOKIE)
    assert guest, "the server issues a guest cookie to a browser opening the page"
    signed = httpx.post(server.url + "/login", data={"name": ANN[0], "password": ANN[1]},
                        headers={"Origin": server.url}, follow_redirects=False, timeout=30)
    assert signed.status_code == 303, signed.text
    return {"guest": {GUEST_COOKIE: guest}, "user": {SESSION_COOKIE: signed.cookies[SESSION_COOKIE]},
            "nobody": {}}


def targets(server) -> dict[str, Path]:
    """Files a visitor must never get: the system's, the process environment, and every file under
    the data folder (the database, and a session key if one is kept there)."""
    found = {"passwd": Path("/etc/passwd"), "environ": Path("/proc/self/environ")}
    for path in Path(server.settings.data_dir).rglob("*"):
        if path.is_file() and not path.name.endswith(("-wal", "-shm")):
            found[path.name] = path
    assert "chatlm.db" in found
    return found


def reference(path: Path, *, meta: bool = True) -> dict[str, Any]:
    ref: dict[str, Any] = {"path": str(path), "orig_name": path.name}
    if meta:
        ref["meta"] = {"_type": "gradio.FileData"}
    return ref


def leaks(response: httpx.Response, path: Path, uploads: Path) -> list[str]:
    text = response.text
    return [what for what, bad in (("names the upload folder", str(uploads) in text),
                                   ("names a gradio_api/file", "gradio_api/file=" in text),
                                   ("echoes the target", str(path) in text and response.status_code < 400))
            if bad]


def test_a_file_reference_in_any_input_of_any_event_is_refused_and_copies_nothing(server, uploads) -> None:
    config = httpx.get(server.url + "/config", timeout=30).json()
    events = [(dep["id"], len(dep["inputs"])) for dep in config["dependencies"] if dep["inputs"]]
    info = httpx.get(server.url + "/gradio_api/info", timeout=30).json()["named_endpoints"]
    named = {name: len(spec["parameters"]) for name, spec in info.items()}
    assert len(events) > 40 and len(named) > 25  # the whole app, not a corner of it
    calls = problems = 0
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for who, cookies in identities(server).items():
            http.cookies.clear()
            http.cookies.update(cookies)
            for target, path in targets(server).items():
                for fn_index, n in events:
                    for i in range(n):
                        data: list[Any] = [None] * n
                        data[i] = reference(path) if i % 2 == 0 else [{"nested": reference(path, meta=False)}]
                        r = http.post("/gradio_api/queue/join", json={
                            "data": data, "fn_index": fn_index, "session_hash": f"s{who}", "event_data": None,
                            "trigger_id": None})
                        calls += 1
                        assert r.status_code == 400, (who, target, fn_index, i, r.status_code, r.text)
                        problems += len(leaks(r, path, uploads)) + (server.app.identity._secret() in r.text)
                for name, n in named.items():
                    for i in range(n):
                        data = [None] * n
                        data[i] = reference(path)
                        for route in ("call", "run", "api"):
                            r = http.post(f"/gradio_api/{route}{name}", json={"data": data})
                            calls += 1
                            assert r.status_code == 400, (who, target, route, name, i, r.status_code, r.text)
                            problems += len(leaks(r, path, uploads))
                    r = http.post(f"/gradio_api/call/v2{name}", json={"x": reference(path)})
                    calls += 1
                    assert r.status_code == 400, (who, target, name, r.status_code, r.text)
                # the file route itself serves none of it, by any spelling
                for spelled in (str(path), f"{path}/../{path.name}", f"//{path}", "file://" + str(path)):
                    r = http.get(f"/gradio_api/file={spelled}")
                    assert r.status_code == 404 and path.name not in r.text, (spelled, r.status_code)
                    assert http.get(f"/gradio_api/file/{spelled}").status_code == 404
    time.sleep(0.5)  # anything queued would have run by now
    key = server.app.identity._secret()
    assert not (Path(server.settings.data_dir) / "secret_key").exists()  # the key is in the database
    copies = [p for p in uploads.rglob("*") if p.is_file()]
    assert all(key not in p.read_text(errors="ignore") for p in copies)
    assert copies == [], copies
    assert problems == 0
    print(f"{calls} calls with a file reference, {len(copies)} copies made, 0 leaked")


def _upload(http: httpx.Client, name: str, content: bytes) -> str:
    r = http.post("/gradio_api/upload", files={"files": (name, content, "text/plain")})
    assert r.status_code == 200, r.text
    return r.json()[0]


def _call(http: httpx.Client, name: str, data: list[Any]) -> str:
    """A named endpoint through ``call/`` and its event stream: the stream's text."""
    r = http.post(f"/gradio_api/call/{name}", json={"data": data})
    assert r.status_code == 200, r.text
    event = r.json()["event_id"]
    with http.stream("GET", f"/gradio_api/call/{name}/{event}") as stream:
        return "".join(stream.iter_text())


def test_an_uploaded_file_goes_only_into_an_upload_field(server, uploads) -> None:
    """Past the request check (the file is in the upload folder), Gradio's own processing still
    refuses it in a text input; the knowledge upload field loads it."""
    cookies = identities(server)["user"]
    with httpx.Client(base_url=server.url, timeout=60, cookies=cookies) as http:
        path = _upload(http, "notes.txt", b"The harbour light was built in 1871 by the guild of pilots.")
        ref = {"path": path, "orig_name": "notes.txt", "meta": {"_type": "gradio.FileData"}}
        refused = _call(http, "send", [ref])
        assert "event: error" in refused and "only by an upload field" in refused, refused
        loaded = _call(http, "load_document", [ref, "", "notes.txt"])
        assert "event: complete" in loaded and "notes.txt" in loaded, loaded
    assert server.app.service.library is not None
    with server.app.service.sessions() as s:
        from sqlalchemy import select

        from chatlm.store.models import Document

        assert s.scalar(select(Document.name).where(Document.name == "notes.txt")) == "notes.txt"


def test_uploads_need_an_identity_and_the_answers_carry_the_hardening_headers(server, uploads) -> None:
    r = httpx.post(server.url + "/gradio_api/upload", files={"files": ("big.txt", b"x" * 1000, "text/plain")},
                   timeout=30)
    assert r.status_code == 401
    assert not any(p.is_file() for p in uploads.rglob("*"))
    for path in ("/login", "/", "/gradio_api/info", "/v1/models"):
        headers = httpx.get(server.url + path, timeout=30).headers
        assert headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "same-origin", path
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(server.url + path, timeout=30).status_code == 404, path
    evil = httpx.get(server.url + "/gradio_api/info", headers={"Origin": "http://localhost:9999"}, timeout=30)
    assert "access-control-allow-origin" not in evil.headers
    assert "access-control-allow-credentials" not in evil.headers
    preflight = httpx.options(server.url + "/gradio_api/queue/join", timeout=30, headers={
        "Origin": "http://localhost:9999", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
