"""Sign-in hardening, each test reproducing a finding of a security probe: a slowed sign-in held up
the whole server, names could be told apart by the lockout's words and the waits, a page elsewhere
could sign a visitor in (login CSRF), signing out left a saved cookie working, guests made up by the
client had no fair share, and a planted guest cookie was adopted at sign-in. Real SQLite throughout;
the server tests run the app on uvicorn, as users reach it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from chatlm.chat.limits import UserLimitError
from chatlm.config import Settings
from chatlm.engine.params import SamplingParams
from chatlm.identity.accounts import AccountService
from chatlm.identity.lockout import LOCK_AFTER, SignInError
from chatlm.identity.requests import GUEST_COOKIE, SESSION_COOKIE, Identity
from chatlm.store import db
from chatlm.store.models import User, utcnow
from tests.conftest import ANN, BOB, REPO

TRIES = LOCK_AFTER + 2


@pytest.fixture
def sessions(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'chatlm.db'}"
    db.upgrade(url)
    return db.make_sessionmaker(db.make_engine(url))


def users(sessions) -> int:
    with db.transaction(sessions) as s:
        return int(s.scalar(select(func.count()).select_from(User)) or 0)


def post_login(url: str, name: str, password: str, keep: str = "", **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/login", data={"name": name, "password": password, "keep": keep},
                      follow_redirects=False, timeout=30, **kwargs)


def keep_of(page: str) -> str:
    """The sign-in page's hidden proof of the browser's guest."""
    return re.search(r'name="keep" value="([^"]*)"', page).group(1)


# ---- 2. names cannot be told apart ---------------------------------------------------------------
def test_an_existing_and_a_missing_name_get_the_same_words_and_waits(sessions) -> None:
    waits: list[float] = []
    accounts = AccountService(sessions, sleep=waits.append)
    accounts.add_user(None, "ann", "correct horse")

    def tries(name: str) -> list[tuple[str, list[float]]]:
        seen = []
        for _ in range(TRIES):
            waits.clear()
            with pytest.raises(SignInError) as err:
                accounts.sign_in(name, "a wrong guess")
            seen.append((err.value.message, list(waits)))
        return seen

    ann, nobody = tries("ann"), tries("nobody")
    assert ann == nobody
    assert [w for _, w in ann if w] == [[1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0]]
    assert "locked" in ann[-1][0] and "account" not in ann[-1][0]  # locked for any name alike
    with pytest.raises(SignInError, match="locked"):
        accounts.sign_in("ann", "correct horse")  # even the right password, while locked
    accounts.set_password(None, "ann", "a new password")  # an admin lifts it
    assert accounts.sign_in("ann", "a new password").name == "ann"


def test_wrong_passwords_long_ago_are_forgotten_for_every_name(sessions) -> None:
    from chatlm.store.models import SignInFailure

    waits: list[float] = []
    accounts = AccountService(sessions, sleep=waits.append)
    accounts.add_user(None, "ann", "correct horse")
    for name in ("ann", "nobody"):
        for _ in range(5):
            with pytest.raises(SignInError):
                accounts.sign_in(name, "wrong")
    with db.transaction(sessions) as s:
        s.execute(update(SignInFailure).values(last_failed_at=utcnow() - timedelta(hours=1)))
    waits.clear()
    for name in ("ann", "nobody"):
        with pytest.raises(SignInError, match="Wrong"):
            accounts.sign_in(name, "wrong")
    assert waits == []  # a new row of wrong passwords starts over, for both


# ---- 4. sessions end on the server -----------------------------------------------------------------
def test_a_saved_session_ends_on_sign_out_a_new_password_and_an_admin(sessions, tmp_path: Path) -> None:
    accounts = AccountService(sessions)
    identity = Identity(Settings.from_env({}, data_dir=tmp_path / "data", auth="password"), accounts)
    ann = accounts.add_user(None, *ANN)
    bob = accounts.add_user(None, *BOB)
    key = accounts.create_key(bob).key

    saved = identity.session_value(ann)
    assert identity.session_actor(saved) == ann
    accounts.end_sessions(ann, "ann")  # her own sign-out, everywhere
    assert identity.session_actor(saved) is None
    fresh = identity.session_value(ann)
    assert identity.session_actor(fresh) == ann  # signing in again works

    bobs = identity.session_value(bob)
    with pytest.raises(Exception, match="Only an admin"):
        accounts.end_sessions(bob, "ann")  # not another user's
    accounts.end_sessions(ann, "bob")  # an admin's sign-out of bob
    assert identity.session_actor(bobs) is None and identity.session_actor(fresh) == ann

    bobs = identity.session_value(bob)
    accounts.set_password(bob, "bob", "bob's next password")
    assert identity.session_actor(bobs) is None
    assert accounts.key_actor(key) == bob  # API keys survive a new password: revoked on their own

    accounts.remove_user(ann, "bob")  # a later account that gets bob's id is not bob's session
    later = identity.session_value(accounts.add_user(None, "carl", "carl's password"))
    assert identity.session_actor(later).name == "carl" and identity.session_actor(bobs) is None


@pytest.mark.slow  # runs the command line in a subprocess
def test_users_signout_from_the_shell(tmp_path: Path) -> None:
    env = {**os.environ, "CHATLM_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chatlm", "users", *args], input=stdin, env=env,
                              capture_output=True, text=True, timeout=120, cwd=REPO)

    assert cli("add", "ann", stdin="correct horse\n").returncode == 0
    settings = Settings.from_env({}, data_dir=tmp_path / "data", auth="password")
    accounts = AccountService(db.make_sessionmaker(db.make_engine(settings.db_url)))
    identity = Identity(settings, accounts)
    saved = identity.session_value(accounts.actor("ann"))
    done = cli("signout", "ann")
    assert done.returncode == 0 and "every session of ann ended" in done.stdout
    assert identity.session_actor(saved) is None


# ---- 5. guests are issued by the server and share one budget --------------------------------------
def test_a_made_up_guest_token_is_no_guest_and_makes_no_row(sessions, tmp_path: Path) -> None:
    accounts = AccountService(sessions)
    identity = Identity(Settings.from_env({}, data_dir=tmp_path / "data", auth="password"), accounts)
    before = users(sessions)
    for made_up in ("x", "g" * 43, identity.new_guest_cookie()[:-2] + "xx"):
        assert identity.actor({GUEST_COOKIE: made_up}) is None
    assert users(sessions) == before
    issued = identity.new_guest_cookie()
    guest = identity.actor({GUEST_COOKIE: issued})
    assert guest is not None and guest.is_guest and identity.actor({GUEST_COOKIE: issued}) == guest
    assert users(sessions) == before + 1


def test_guests_together_draw_on_one_fair_share(tmp_path: Path, tiny_backend) -> None:
    from tests.wiring import make_service

    settings = Settings.from_env({}, data_dir=tmp_path / "data", auth="password", user_answers=1,
                                 user_requests_per_minute=0)
    service = make_service(settings, tiny_backend)
    accounts = AccountService(service.sessions)
    one, two = accounts.guest()[0], accounts.guest()[0]
    bob = service.actor("bob")
    first = service.new_conversation(one)
    running = service.send(one, first.id, "a long story", SamplingParams(temperature=0.0, max_new_tokens=200))
    stream = iter(running)
    next(stream)
    short = SamplingParams(temperature=0.0, max_new_tokens=2)
    second = service.new_conversation(two)
    with pytest.raises(UserLimitError, match="Guests together"):
        service.send(two, second.id, "another guest", short)  # a second guest is no new share
    assert service.history(two, second.id) == []
    service.send(bob, service.new_conversation(bob).id, "hello", short).run()  # a user is not held back
    service.stop(one, first.id)
    list(stream)
    service.send(two, second.id, "now it fits", short).run()


# ---- the server: the event loop, CSRF, sign-out, guests, adoption ---------------------------------
@pytest.fixture
def server(accounts_server):
    return accounts_server


@pytest.mark.slow
def test_a_slowed_sign_in_holds_up_no_other_request(server) -> None:
    accounts = AccountService(server.app.service.sessions, sleep=lambda _: None)
    for _ in range(5):  # ann's next wrong password waits 3 s
        with pytest.raises(SignInError):
            accounts.sign_in("ann", "a wrong guess")
    key = accounts.create_key(accounts.actor("bob")).key
    slow: dict[str, float] = {}

    def guess() -> None:
        start = time.monotonic()
        slow["status"] = post_login(server.url, "ann", "another guess").status_code
        slow["took"], slow["done"] = time.monotonic() - start, time.monotonic()

    thread = threading.Thread(target=guess)
    thread.start()
    time.sleep(0.5)  # the guess is waiting now
    for path, headers in (("/login", {}), ("/v1/models", {"Authorization": f"Bearer {key}"})):
        start = time.monotonic()
        assert httpx.get(f"{server.url}{path}", headers=headers, timeout=30).status_code == 200
        assert time.monotonic() - start < 1.0, path
    answered = time.monotonic()
    thread.join(30)
    assert slow["status"] == 401 and slow["took"] >= 2.5 and slow["done"] > answered


@pytest.mark.slow
def test_the_server_says_the_same_for_an_existing_and_a_missing_name(server) -> None:
    accounts = server.app.identity.accounts
    waited: list[float] = []

    async def pause(seconds: float) -> None:
        waited.append(seconds)

    accounts.pause = pause

    def tries(name: str) -> list[tuple[int, str, list[float]]]:
        seen = []
        for _ in range(TRIES):
            waited.clear()
            response = post_login(server.url, name, "a wrong guess")
            said = re.search(r'role="alert">([^<]*)<', response.text).group(1)
            seen.append((response.status_code, said, list(waited)))
        return seen

    assert tries("bob") == tries("nobody")


@pytest.mark.slow
def test_a_form_from_another_site_neither_signs_in_nor_out(server) -> None:
    elsewhere = ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"},
                 {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                 {"Origin": f"{server.url}.evil.example"})
    for headers in elsewhere:
        response = post_login(server.url, *BOB, headers=headers)
        assert response.status_code == 403 and SESSION_COOKIE not in response.cookies, headers
    ours = post_login(server.url, *BOB, headers={"Origin": server.url, "Referer": f"{server.url}/login"})
    assert ours.status_code == 303 and SESSION_COOKIE in ours.cookies
    assert post_login(server.url, *BOB).status_code == 303  # no browser, no visitor's cookies: allowed
    cookie = {SESSION_COOKIE: ours.cookies[SESSION_COOKIE]}
    for headers in elsewhere[:2]:
        out = httpx.post(f"{server.url}/logout", cookies=cookie, headers=headers, timeout=30)
        assert out.status_code == 403
    asked = httpx.get(f"{server.url}/logout", cookies=cookie, timeout=30)
    assert asked.status_code == 200 and 'method="post" action="/logout"' in asked.text
    assert server.app.identity.session_actor(cookie[SESSION_COOKIE]).name == "bob"  # all still signed in


@pytest.mark.slow
def test_a_saved_cookie_is_refused_after_signing_out(server) -> None:
    page = {"accept": "text/html"}
    saved = post_login(server.url, *BOB).cookies[SESSION_COOKIE]
    assert httpx.get(f"{server.url}/", headers=page, cookies={SESSION_COOKIE: saved}, timeout=30).status_code == 200
    out = httpx.post(f"{server.url}/logout", cookies={SESSION_COOKIE: saved}, headers={"Origin": server.url},
                     follow_redirects=False, timeout=30)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    replayed = httpx.get(f"{server.url}/", headers=page, cookies={SESSION_COOKIE: saved},
                         follow_redirects=False, timeout=30)
    assert replayed.status_code == 303 and replayed.headers["location"] == "/login"
    assert server.app.identity.session_actor(saved) is None


@pytest.mark.slow
def test_only_guest_cookies_the_server_issued_are_guests(server) -> None:
    gradio_client = pytest.importorskip("gradio_client")
    sessions = server.app.service.sessions
    before = users(sessions)
    for made_up in ("x", "g" * 43):
        script = gradio_client.Client(server.url, verbose=False, headers={"Cookie": f"{GUEST_COOKIE}={made_up}"})
        try:
            for _ in range(2):
                with pytest.raises(Exception, match="not signed in"):
                    script.predict(text="hello", api_name="/send")
        finally:
            script.close()
    assert users(sessions) == before  # refused like no identity, and no row per call
    page = httpx.get(f"{server.url}/", headers={"accept": "text/html"}, cookies={GUEST_COOKIE: "x"},
                     follow_redirects=False, timeout=30)
    issued = page.cookies[GUEST_COOKIE]  # a page swaps a made-up token for one of the server's
    assert issued != "x" and server.app.identity.guest_token(issued) is not None


@pytest.mark.slow
def test_a_planted_guest_cookie_is_not_adopted_at_sign_in(server) -> None:
    gradio_client = pytest.importorskip("gradio_client")
    planted = server.app.identity.new_guest_cookie()  # the attacker's own guest, issued to them
    attacker = gradio_client.Client(server.url, verbose=False, headers={"Cookie": f"{GUEST_COOKIE}={planted}"})
    try:
        attacker.predict(text="Planted chat", temperature=0, max_new=2, api_name="/send")
    finally:
        attacker.close()
    guest = server.app.identity.actor({GUEST_COOKIE: planted})
    bob = server.app.identity.accounts.actor("bob")

    # signed in without the page (no proof), and with the proof of another cookie than the one sent
    own = server.app.identity.new_guest_cookie()
    other_page = httpx.get(f"{server.url}/login", cookies={GUEST_COOKIE: own}, timeout=30)
    for keep in ("", keep_of(other_page.text), "made-up"):
        response = post_login(server.url, *BOB, keep=keep, cookies={GUEST_COOKIE: planted})
        assert response.status_code == 303 and f'{GUEST_COOKIE}=""' in response.headers["set-cookie"]
        assert server.app.service.conversations(bob) == []
        assert [c.title for c in server.app.service.conversations(guest)] == ["Planted chat"]

    # a guest row older than a guest cookie lives is not adopted even through the page
    with db.transaction(server.app.service.sessions) as s:
        s.execute(update(User).where(User.id == guest.user_id).values(created_at=utcnow() - timedelta(days=400)))
    page = httpx.get(f"{server.url}/login", cookies={GUEST_COOKIE: planted}, timeout=30)
    post_login(server.url, *BOB, keep=keep_of(page.text), cookies={GUEST_COOKIE: planted})
    assert server.app.service.conversations(bob) == []
