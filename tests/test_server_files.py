"""The server reads only files it received, and nothing in its process opens the database files
except SQLAlchemy: the attacks of issue 11 replayed against a real `chatlm serve` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port

gradio_client = pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow


def _count_rows(db: Path) -> dict[str, int]:
    """Row counts read by another process through SQLAlchemy (the server is down by then)."""
    code = (
        "import json, sys, sqlalchemy as sa\n"
        "e = sa.create_engine('sqlite:///' + sys.argv[1])\n"
        "with e.connect() as c:\n"
        "    print(json.dumps({t: c.exec_driver_sql(f'select count(*) from {t}').scalar()\n"
        "                      for t in ('messages', 'documents')}))\n"
        "e.dispose()\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True,
                         check=True, cwd=REPO)
    return json.loads(out.stdout)


class ServeProcess:
    """`python -m chatlm serve` in its own process, so that kill -9 is a real crash."""

    def __init__(self, data_dir: Path, model: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CHATLM_DATA_DIR": str(data_dir), "CHATLM_MODEL": str(model),
               "CHATLM_PORT": str(self.port), "CHATLM_DEVICE": "cpu", "CHATLM_MAX_NEW_TOKENS": "8"}
        self.proc = subprocess.Popen([sys.executable, "-m", "chatlm", "serve"], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.kill()
        raise RuntimeError("server did not start")

    def call(self, endpoint: str, data: list) -> tuple[str, str]:
        """A raw Gradio API call, as any HTTP client can make it: (final event, its data)."""
        started = httpx.post(f"{self.url}/gradio_api/call/{endpoint}", json={"data": data}, timeout=30)
        if started.status_code == 400:  # refused by the request guard before Gradio saw it
            return "error", started.text
        started.raise_for_status()
        event_id = started.json()["event_id"]
        event, payload = "", ""
        with httpx.stream("GET", f"{self.url}/gradio_api/call/{endpoint}/{event_id}", timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    payload = line.removeprefix("data:").strip()
                    if event in ("complete", "error"):
                        break
        return event, payload

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def _file(path: Path | str) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


@pytest.fixture
def serve(tmp_path, tiny_dir):
    started: list[ServeProcess] = []

    def start() -> ServeProcess:
        proc = ServeProcess(tmp_path / "data", tiny_dir)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def test_a_path_the_client_names_is_refused_and_nothing_is_stored(serve, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("The launch code is 0000.")
    server = serve()
    for path in (REPO / "README.md", secret, tmp_path / "data" / "chatlm.db"):
        event, payload = server.call("load_document", [_file(path), "", ""])
        assert "0000" not in payload
        assert event == "error" or "Not loaded" in payload, (path, event, payload)
    # the training tab's optional SQuAD file is the other endpoint that takes a file
    event, payload = server.call("start_round", ["auto", 0, 2, 0, False, _file(REPO / "README.md")])
    assert event == "error" or "not uploaded" in payload.lower(), payload
    server.kill()
    assert _count_rows(tmp_path / "data" / "chatlm.db")["documents"] == 0


def test_naming_the_database_file_loses_no_later_write(serve, tmp_path):
    """The attack: make the server open and close its own database file (which drops SQLite's
    POSIX locks), let another SQLite client close, write, crash, restart: every write is there."""
    db = tmp_path / "data" / "chatlm.db"
    server = serve()
    for suffix in ("", "-wal", "-shm"):
        server.call("load_document", [_file(f"{db}{suffix}"), "", ""])
    client = gradio_client.Client(server.url, verbose=False)
    try:
        client.predict(text="first message", temperature=0, max_new=4, api_name="/send")
        _count_rows(db)  # another SQLite client opens and closes the database
        client.predict(text="second message", temperature=0, max_new=4, api_name="/send")
    finally:
        client.close()
    server.kill()  # a crash: whatever the server was told is committed must survive it
    assert _count_rows(db)["messages"] == 4  # two questions, two answers
    restarted = serve()
    again = gradio_client.Client(restarted.url, verbose=False)
    try:
        chat, *_ = again.predict(None, api_name="/load")
    finally:
        again.close()
    shown = [m["content"] for m in chat["value"]] if isinstance(chat, dict) else [m["content"] for m in chat]
    assert "second message" in json.dumps(shown)
