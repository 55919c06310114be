"""Sign in with Hugging Face (``CHATLM_AUTH=hf``) on a running server, through Gradio's local mock of
OAuth (off a Space the sign-in completes as this machine's Hugging Face user; here that user is
whoever the test says, as no hub is reachable): the session cookie, admins from ``CHATLM_ADMINS``,
a guest's work kept, an account with a password never taken over, and the Space's defaults.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from chatlm.config import Settings
from chatlm.identity.accounts import AccountService
from chatlm.identity.requests import GUEST_COOKIE, SESSION_COOKIE

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow


@pytest.fixture
def hub_user(monkeypatch) -> dict[str, str]:
    """The Hugging Face user this machine is logged in as (what Gradio's mock asks the hub)."""
    from gradio import oauth

    who = {"name": "hfann"}
    monkeypatch.setattr(oauth, "get_token", lambda: "hf_test_token")
    monkeypatch.setattr(oauth, "whoami", lambda *a, **k: {
        "type": "user", "name": who["name"], "fullname": who["name"].title(), "avatarUrl": ""})
    return who


@pytest.fixture
def server(start_server, tiny_backend, hub_user):
    running = start_server(tiny_backend, auth="hf", admins=("hfann",))
    yield running
    running.server.config.timeout_graceful_shutdown = 1


def hf_sign_in(server, cookies: dict[str, str] | None = None) -> httpx.Response:
    """Click "Sign in with Hugging Face" on the sign-in page (a form carrying the page's proof of
    this browser's guest) and follow the flow back to the app (not into it)."""
    with httpx.Client(base_url=server.url, cookies=cookies or {}, timeout=30) as http:
        form = http.get("/login")
        keep = re.search(r'name="keep" value="([^"]*)"', form.text).group(1)
        start = http.post("/login/huggingface", data={"keep": keep}, follow_redirects=False)
        assert start.status_code in (302, 303), start.text
        return http.get(start.headers["location"], follow_redirects=False)


def as_user(server, response: httpx.Response) -> Any:
    cookie = f"{SESSION_COOKIE}={response.cookies[SESSION_COOKIE]}"
    return gradio_client.Client(server.url, verbose=False, headers={"Cookie": cookie})


def test_hugging_face_sign_in_gives_a_session_and_admins_come_from_the_setting(server, hub_user) -> None:
    page = httpx.get(f"{server.url}/login", timeout=30)
    assert page.status_code == 200 and "Sign in with Hugging Face" in page.text
    assert 'type="password"' not in page.text  # no password form in this mode
    refused = httpx.post(f"{server.url}/login", data={"name": "hfann", "password": "x"}, timeout=30)
    assert refused.status_code == 400 and "Hugging Face only" in refused.text

    done = hf_sign_in(server)
    assert done.status_code == 303 and done.headers["location"] == "/"
    flags = done.headers["set-cookie"].lower()
    assert "httponly" in flags and "samesite=lax" in flags
    ann = server.app.identity.session_actor(done.cookies[SESSION_COOKIE])
    assert ann is not None and ann.name == "hfann" and ann.is_admin and not ann.is_guest

    hub_user["name"] = "hfbob"  # another person signs in on another machine
    bob_done = hf_sign_in(server)
    bob = server.app.identity.session_actor(bob_done.cookies[SESSION_COOKIE])
    assert bob is not None and bob.name == "hfbob" and not bob.is_admin

    ann_client, bob_client = as_user(server, done), as_user(server, bob_done)
    try:
        ann_client.predict(text="Ann asks on the hub", temperature=0, max_new=4, api_name="/send")
        mine = server.app.service.conversations(ann)
        assert [c.title for c in mine] == ["Ann asks on the hub"]
        assert server.app.service.conversations(bob) == []
        with pytest.raises(Exception, match="Only an admin"):  # a user is no admin: no round for bob
            bob_client.predict("auto", 0, 1, 0, False, None, False, api_name="/start_round")
        assert ann_client.predict("Hi", "base model", "base model", api_name="/compare")  # the admin may
    finally:
        ann_client.close()
        bob_client.close()

    again = hf_sign_in(server)  # signing in again is the same account, not a new one
    assert server.app.identity.session_actor(again.cookies[SESSION_COOKIE]).user_id == bob.user_id


def test_signing_in_keeps_the_guests_chat_and_never_takes_over_a_password_account(server, hub_user) -> None:
    first = httpx.get(f"{server.url}/", headers={"accept": "text/html"}, timeout=30, follow_redirects=False)
    token = first.cookies[GUEST_COOKIE]
    guest = gradio_client.Client(server.url, verbose=False, headers={"Cookie": f"{GUEST_COOKIE}={token}"})
    try:
        guest.predict(text="Asked as a guest", temperature=0, max_new=4, api_name="/send")
    finally:
        guest.close()
    done = hf_sign_in(server, cookies={GUEST_COOKIE: token})
    assert 'chatlm_guest=""' in ",".join(done.headers.get_list("set-cookie"))
    ann = server.app.identity.session_actor(done.cookies[SESSION_COOKIE])
    assert [c.title for c in server.app.service.conversations(ann)] == ["Asked as a guest"]

    AccountService(server.app.service.sessions).add_user(None, "carl", "carl's password")
    hub_user["name"] = "carl"  # a hub user who happens to share a name with a password account
    taken = hf_sign_in(server)
    assert taken.status_code == 401 and "signs in with a password" in taken.text
    assert SESSION_COOKIE not in taken.cookies


def test_the_local_mock_never_serves_an_address_others_can_reach(monkeypatch) -> None:
    from chatlm.errors import ConfigError

    for var in ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OPENID_PROVIDER_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="every visitor"):
        Settings.from_env({}, auth="hf", host="0.0.0.0").check_exposure()
    Settings.from_env({}, auth="hf").check_exposure()  # 127.0.0.1: the mock, for trying it locally
    for var, value in (("OAUTH_CLIENT_ID", "a"), ("OAUTH_CLIENT_SECRET", "b"), ("OPENID_PROVIDER_URL", "c")):
        monkeypatch.setenv(var, value)
    Settings.from_env({}, auth="hf", host="0.0.0.0").check_exposure()  # a Space's OAuth app: fine


def test_a_space_with_hf_oauth_signs_in_with_hugging_face_and_its_owner_is_admin() -> None:
    space = {"SPACE_ID": "someone/chatlm", "SPACE_AUTHOR_NAME": "someone"}
    with_oauth = Settings.from_env({**space, "OAUTH_CLIENT_ID": "abc"})
    assert with_oauth.auth == "hf" and with_oauth.admins == ("someone",) and with_oauth.guests_allowed
    assert Settings.from_env(space).auth == "password"  # no hf_oauth: accounts with passwords
    chosen = Settings.from_env({**space, "OAUTH_CLIENT_ID": "abc", "CHATLM_ADMINS": "ann, bob"})
    assert chosen.admins == ("ann", "bob")


def test_a_hugging_face_account_deletes_itself_without_a_password(server, hub_user) -> None:
    hub_user["name"] = "hfbob"
    done = hf_sign_in(server)
    me = as_user(server, done)
    try:
        changed, *_ = me.predict("", "new one", "new one", api_name="/change_password")
        assert "no password here" in changed
        status, *_ = me.predict(True, "", api_name="/delete_account")
    finally:
        me.close()
    assert "deleted" in status
    assert server.app.identity.session_actor(done.cookies[SESSION_COOKIE]) is None
