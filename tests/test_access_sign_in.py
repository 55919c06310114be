"""Signing in on a running server (``CHATLM_AUTH=password``): the sign-in page and its cookie flags,
signing out everywhere, a guest's chats kept on signing in, a session ended elsewhere, a cookieless
script refused, and no server open to the network by accident."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from chatlm.config import Settings
from chatlm.errors import ConfigError
from chatlm.identity.accounts import AccountService
from chatlm.identity.requests import GUEST_COOKIE, SESSION_COOKIE
from chatlm.store import db
from tests.access import client_as, counts, guest_of, refused, session_cookie, sign_in
from tests.conftest import ANN, BOB, REPO

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow


@pytest.fixture
def server(accounts_server):
    return accounts_server


def test_sign_in_page_cookie_flags_wrong_password_and_sign_out(server) -> None:
    page = httpx.get(f"{server.url}/", headers={"accept": "text/html"}, follow_redirects=False, timeout=30)
    assert page.status_code == 200 and GUEST_COOKIE in page.headers.get("set-cookie", "")
    guest_flags = page.headers["set-cookie"].lower()
    assert "httponly" in guest_flags and "samesite=lax" in guest_flags
    form = httpx.get(f"{server.url}/login", timeout=30)
    assert form.status_code == 200 and 'type="password"' in form.text
    wrong = sign_in(server, "ann", "not it")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    assert SESSION_COOKIE not in wrong.cookies
    unknown = sign_in(server, "nobody", "not it")
    assert "Wrong user name or password" in unknown.text  # the same words: names stay secret
    right = sign_in(server, *ANN)
    assert right.status_code == 303 and right.headers["location"] == "/"
    flags = right.headers["set-cookie"].lower()
    assert "httponly" in flags and "samesite=lax" in flags and "max-age=" in flags
    forged = right.cookies[SESSION_COOKIE][:-3] + "abc"
    assert server.app.identity.session_actor(forged) is None
    assert server.app.identity.session_actor(right.cookies[SESSION_COOKIE]).name == "ann"
    other = sign_in(server, *ANN).cookies[SESSION_COOKIE]  # ann in a second browser
    asked = httpx.get(f"{server.url}/logout", follow_redirects=False, timeout=30,
                      cookies={SESSION_COOKIE: right.cookies[SESSION_COOKIE]})
    assert asked.status_code == 200 and 'method="post" action="/logout"' in asked.text  # a GET ends nothing
    assert server.app.identity.session_actor(right.cookies[SESSION_COOKIE]).name == "ann"
    out = httpx.post(f"{server.url}/logout", follow_redirects=False, timeout=30,
                     cookies={SESSION_COOKIE: right.cookies[SESSION_COOKIE]})
    assert out.status_code == 303 and 'chatlm_session=""' in out.headers["set-cookie"]
    for saved in (right.cookies[SESSION_COOKIE], other):  # signed out everywhere
        assert server.app.identity.session_actor(saved) is None
    again = sign_in(server, *ANN).cookies[SESSION_COOKIE]
    AccountService(server.app.service.sessions).set_password(None, "ann", "a brand new one")
    assert server.app.identity.session_actor(again) is None  # a new password ends sessions too


def test_no_open_server_by_accident(tmp_path) -> None:
    with pytest.raises(ConfigError, match="CHATLM_ALLOW_OPEN"):
        Settings.from_env({"CHATLM_HOST": "0.0.0.0"}).check_exposure()
    Settings.from_env({"CHATLM_HOST": "0.0.0.0", "CHATLM_AUTH": "password"}).check_exposure()
    Settings.from_env({"CHATLM_HOST": "0.0.0.0", "CHATLM_ALLOW_OPEN": "1"}).check_exposure()
    Settings.from_env({}).check_exposure()  # 127.0.0.1, no auth: local use as before
    run = subprocess.run([sys.executable, "-m", "chatlm", "serve", "--host", "0.0.0.0"], cwd=REPO,
                         env={"CHATLM_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin",
                              "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "CHATLM_AUTH=password" in run.stderr


def test_signing_in_keeps_what_the_browser_did_as_a_guest(server) -> None:
    first = httpx.get(f"{server.url}/", headers={"accept": "text/html"}, follow_redirects=False, timeout=30)
    token = first.cookies[GUEST_COOKIE]  # as the gate gives it to a browser
    guest = client_as(server, f"{GUEST_COOKIE}={token}")
    try:
        guest.predict(text="Asked before signing in", temperature=0, max_new=3, api_name="/send")
    finally:
        guest.close()
    accounts = AccountService(server.app.service.sessions)
    guest_actor = guest_of(server, token)
    form = httpx.get(f"{server.url}/login", cookies={GUEST_COOKIE: token}, timeout=30)
    keep = re.search(r'name="keep" value="([^"]+)"', form.text).group(1)  # the page's proof of the guest
    response = httpx.post(f"{server.url}/login", data={"name": BOB[0], "password": BOB[1], "keep": keep},
                          cookies={GUEST_COOKIE: token}, follow_redirects=False, timeout=30)
    assert response.status_code == 303 and f'{GUEST_COOKIE}=""' in response.headers.get("set-cookie", "")
    bob_actor = accounts.actor("bob")
    assert [c.title for c in server.app.service.conversations(bob_actor)] == ["Asked before signing in"]
    assert server.app.service.conversations(guest_actor) == []
    with db.transaction(server.app.service.sessions) as s:
        from chatlm.store.models import User

        assert s.get(User, guest_actor.user_id) is None  # the guest identity is gone, its chat is bob's


def test_an_ended_session_is_sent_to_sign_in(start_server, tiny_backend) -> None:
    running = start_server(tiny_backend, auth="password", guests="off")
    running.server.config.timeout_graceful_shutdown = 1
    AccountService(running.app.service.sessions).add_user(None, *ANN)
    page = {"accept": "text/html"}
    anonymous = httpx.get(f"{running.url}/", headers=page, follow_redirects=False, timeout=30)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/login"
    api = httpx.get(f"{running.url}/gradio_api/info", follow_redirects=False, timeout=30)
    assert api.status_code == 401  # no guests: nothing of the app without signing in
    cookie = session_cookie(running, ANN)
    ok = httpx.get(f"{running.url}/", headers={**page, "Cookie": cookie}, follow_redirects=False, timeout=30)
    assert ok.status_code == 200
    AccountService(running.app.service.sessions).set_password(None, "ann", "changed elsewhere")
    ended = httpx.get(f"{running.url}/", headers={**page, "Cookie": cookie}, follow_redirects=False, timeout=30)
    assert ended.status_code == 303 and ended.headers["location"] == "/login"


def test_a_script_without_cookies_is_refused_and_makes_no_guest(server) -> None:
    """Only a browser opening the page becomes a guest; a cookieless script would otherwise make a
    user row per call. It is told to sign in or send a key, and nothing is stored."""
    from sqlalchemy import text

    def users() -> int:
        with db.transaction(server.app.service.sessions) as s:
            return s.execute(text("SELECT count(*) FROM users")).scalar()

    before, stored = users(), counts(server)
    script = gradio_client.Client(server.url, verbose=False)
    try:
        for _ in range(3):
            assert "not signed in" in refused(script.predict, text="hello", api_name="/send")
    finally:
        script.close()
    assert users() == before and counts(server) == stored
    key = AccountService(server.app.service.sessions).create_key(AccountService(server.app.service.sessions)
                                                                 .actor("bob")).key
    keyed = client_as(server, key=key)
    try:
        keyed.predict(text="hello with a key", temperature=0, max_new=2, api_name="/send")
    finally:
        keyed.close()
    bob = AccountService(server.app.service.sessions).actor("bob")
    assert [c.title for c in server.app.service.conversations(bob)] == ["hello with a key"]
