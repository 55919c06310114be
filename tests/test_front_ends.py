"""Two ``chatlm serve`` processes on one PostgreSQL (as behind a load balancer), sharing the adapter
storage and the session key: a user signed in on one is signed in on the other, their chats,
ratings and texts appear in both, a round started on one is seen (and a second one refused) on
the other, and a promotion made on one is served by the other from its next answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from chatlm.identity.requests import SESSION_COOKIE
from chatlm.store import db, registry
from chatlm.store.models import Message, User
from chatlm.ui.chat_view import shown_text
from tests.conftest import ANN, REPO, free_port
from tests.seeding import seed_pairs
from tests.test_adapters import make_adapter
from tests.test_ui_client import chat_texts, value

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow


class FrontEnd:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log


@pytest.fixture
def shared(tmp_path: Path, postgres, tiny_dir) -> dict[str, Any]:
    """What every front end shares: the database, the data (adapter) storage and the session key."""
    url = postgres.new_database()
    env = {**os.environ, "CHATLM_DATABASE_URL": url, "CHATLM_DATA_DIR": str(tmp_path / "shared"),
           "CHATLM_MODEL": str(tiny_dir), "CHATLM_DEVICE": "cpu", "CHATLM_AUTH": "password",
           "CHATLM_SECRET_KEY": "one key for every front end", "CHATLM_MAX_NEW_TOKENS": "8",
           "CHATLM_USER_REQUESTS_PER_MINUTE": "0"}
    subprocess.run([sys.executable, "-m", "chatlm", "users", "add", ANN[0], "--admin"],
                   input=(ANN[1] + "\n").encode(), env=env, cwd=REPO, check=True, capture_output=True)
    return {"env": env, "url": url, "tmp": tmp_path}


@pytest.fixture
def front_ends(shared) -> Iterator[list[FrontEnd]]:
    started: list[FrontEnd] = []
    try:
        for i in range(2):
            port = free_port()
            log = shared["tmp"] / f"front{i}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "chatlm", "serve"], cwd=REPO,
                                        env={**shared["env"], "CHATLM_PORT": str(port)},
                                        stdout=out, stderr=subprocess.STDOUT)
            started.append(FrontEnd(proc, f"http://127.0.0.1:{port}", log))
        for front in started:
            deadline = time.monotonic() + 180
            while "serving" not in front.log.read_text(errors="replace"):
                assert front.proc.poll() is None, front.log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "a front end did not start"
                time.sleep(0.5)
        yield started
    finally:
        for front in started:
            front.proc.terminate()
        for front in started:
            try:
                front.proc.wait(30)
            except subprocess.TimeoutExpired:
                front.proc.kill()


def signed_in(front: FrontEnd, cookie: str) -> Any:
    return gradio_client.Client(front.url, verbose=False, headers={"Cookie": cookie})


def test_two_front_ends_share_users_chats_rounds_and_promotions(shared, front_ends, tiny, tmp_path) -> None:
    a, b = front_ends
    login = httpx.post(f"{a.url}/login", data={"name": ANN[0], "password": ANN[1]}, timeout=30)
    assert login.status_code == 303
    cookie = f"{SESSION_COOKIE}={login.cookies[SESSION_COOKIE]}"
    on_a, on_b = signed_in(a, cookie), signed_in(b, cookie)  # signed in on A, so on B too
    sessions = db.make_sessionmaker(db.make_engine(shared["url"]))
    try:
        on_a.predict(text="Asked on the first front end", temperature=0, max_new=4, api_name="/send")
        with db.transaction(sessions) as s:
            asked = s.scalars(select(Message).order_by(Message.id)).all()
        conv_id = asked[0].conversation_id
        answer = asked[-1]
        seen_on_b = chat_texts(on_b.predict(conv_id, api_name="/load")[0])  # B opens the page
        assert seen_on_b == [("user", "Asked on the first front end"), ("assistant", shown_text(answer).strip())]

        on_b.predict(text="Asked on the second", temperature=0, max_new=4, api_name="/send")
        with db.transaction(sessions) as s:
            by_user = {m.content for m in s.scalars(select(Message).where(Message.role == "user"))}
        assert by_user == {"Asked on the first front end", "Asked on the second"}

        # an adapter on the shared storage, registered; promoted on A, served by B's next answer
        folder = make_adapter(tiny.model, Path(shared["env"]["CHATLM_DATA_DIR"]) / "adapters" / "shared-v1", 1)
        with db.transaction(sessions) as s:
            registry.register(s, name="shared-v1", base_model="tiny", parent=None, path=str(folder),
                              method="sft", dataset_hash="0" * 64, hyperparams={}, metrics={})
        on_a.predict("shared-v1", None, api_name="/promote_adapter")
        on_b.predict(text="Which adapter answers me?", temperature=0, max_new=4, api_name="/send")
        with db.transaction(sessions) as s:
            last = s.scalars(select(Message).where(Message.role == "assistant").order_by(Message.id.desc())).first()
        assert last is not None and last.adapter == "shared-v1"

        # one round at a time across front ends: a round that runs (started elsewhere) refuses B's
        with db.transaction(sessions) as s:
            ann_id = s.scalar(select(User.id).where(User.name == ANN[0]))
        seed_pairs(sessions, ann_id, 10)  # enough ratings that only the running round stands in the way
        with db.transaction(sessions) as s:
            run = registry.start_run(s, method="sft", params={})
            run.status, run.pid, run.host = "running", os.getpid(), registry.HOST
        refused = value(on_b.predict("auto", 0, 1, 0, False, None, False, api_name="/start_round")[0])
        assert f"Not started: Training round {run.id} is still running" in refused
        with db.transaction(sessions) as s:
            assert [r.id for r in registry.latest_runs(s)] == [run.id]  # nothing else was queued
    finally:
        on_a.close()
        on_b.close()
        sessions.kw["bind"].dispose()
