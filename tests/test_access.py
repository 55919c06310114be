"""Accounts on a running server (``CHATLM_AUTH=password``): sign-in, cookies, and who may call what.

Each caller has its own cookie jar: ann (the first account, admin), bob (a user), a guest, and an
anonymous caller with no cookie at all. The ids tried are other users' on purpose, and a refused
call must leave the database as it was.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatlm.config import Settings
from chatlm.errors import ConfigError
from chatlm.identity.accounts import AccountService
from chatlm.identity.passwords import name_key
from chatlm.identity.requests import GUEST_COOKIE, SESSION_COOKIE
from chatlm.store import db
from tests.conftest import ANN, BOB, REPO

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow


@pytest.fixture
def server(accounts_server):
    return accounts_server


def sign_in(server, name: str, password: str) -> httpx.Response:
    return httpx.post(f"{server.url}/login", data={"name": name, "password": password},
                      follow_redirects=False, timeout=30)


def client_as(server, cookie: str | None = None, key: str | None = None) -> Any:
    headers = {}
    if cookie:
        headers["Cookie"] = cookie
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return gradio_client.Client(server.url, verbose=False, headers=headers)


def issued_guest(server) -> str:
    """A guest cookie's value as the server issues it (signed) to a browser on its first page."""
    return server.app.identity.new_guest_cookie()


def guest_of(server, cookie: str) -> Any:
    return server.app.identity.actor({GUEST_COOKIE: cookie})


def session_cookie(server, who: tuple[str, str]) -> str:
    response = sign_in(server, *who)
    assert response.status_code == 303, response.text
    return f"{SESSION_COOKIE}={response.cookies[SESSION_COOKIE]}"


def counts(server) -> dict[str, int]:
    from sqlalchemy import text

    with db.transaction(server.app.service.sessions) as s:
        return {t: s.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                for t in ("conversations", "messages", "ratings", "documents", "adapters", "training_runs")}


def refused(call, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(Exception) as err:  # gradio_client raises AppError with the message
        call(*args, **kwargs)
    return str(err.value)


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


def test_each_user_sees_only_their_own_and_only_admins_train(server) -> None:
    ann = client_as(server, session_cookie(server, ANN))
    bob = client_as(server, session_cookie(server, BOB))
    guest_cookie = issued_guest(server)
    guest = client_as(server, f"{GUEST_COOKIE}={guest_cookie}")
    try:
        ann.predict(text="Ann's secret question", temperature=0, max_new=4, api_name="/send")
        service = server.app.service
        accounts = AccountService(service.sessions)
        ann_id, bob_id = accounts.actor("ann").user_id, accounts.actor("bob").user_id
        ann_conv = service.conversations(ann_id)[0]
        ann.predict(None, None, "", "", api_name="/load_document")  # nothing to load: refused, kept
        doc = service.library.load(actor=ann_id, conversation_id=ann_conv.id, name="ann.txt",
                                   text="Ann's private notes about the launch date. " * 20)
        before = counts(server)

        # bob: his sidebar is his own; ann's ids are refused and change nothing
        bob_view = bob.predict(None, api_name="/load")
        assert "Ann's secret" not in str(bob_view) and service.conversations(bob_id) == []
        assert "does not exist" in refused(bob.predict, ann_conv.id, api_name="/open")
        # her chat's Markdown export: answered as a missing chat, to bob and to a stranger
        for cookie in (session_cookie(server, BOB), f"{GUEST_COOKIE}={issued_guest(server)}"):
            got = httpx.get(f"{server.url}/chats/{ann_conv.id}/export", headers={"Cookie": cookie}, timeout=30)
            assert got.status_code == 404 and "Ann's" not in got.text
        mine = httpx.get(f"{server.url}/chats/{ann_conv.id}/export",
                         headers={"Cookie": session_cookie(server, ANN)}, timeout=30)
        assert mine.status_code == 200 and "Ann's secret question" in mine.text
        bob.predict(text="Bob's own question", temperature=0, max_new=4, api_name="/send")
        assert any(why in refused(bob.predict, doc.id, api_name="/reuse_document")
                   for why in ("does not exist", "not in the list of choices"))
        after_bob = counts(server)
        assert after_bob["conversations"] == before["conversations"] + 1  # only his own new chat
        assert service.library.documents(service.conversations(bob_id)[0].id) == []
        assert service.conversation(ann_id, ann_conv.id).title == ann_conv.title

        # admin-only endpoints: refused for bob and the guest, nothing starts or changes
        for caller in (bob, guest):
            for args, name in (((("auto", 0, 2, 0, False, None)), "/start_round"),
                               ((("base model", None)), "/promote_adapter"),
                               (((None,)), "/rollback_adapter"),
                               ((("Hi", "base model", "base model")), "/compare")):
                assert "Only an admin" in refused(caller.predict, *args, api_name=name)
        assert counts(server) == after_bob

        # the admin may compare; exports are scoped: bob's has only his text, ann's everyone's
        left, right = ann.predict("Hi", "base model", "base model", api_name="/compare")
        assert isinstance(left, str) and left == right
        bob_file, _ = bob.predict("messages", api_name="/export_dataset")
        ann_file, _ = ann.predict("messages", api_name="/export_dataset")
        bob_text = Path(bob_file).read_text(encoding="utf-8")
        assert "Bob's own question" in bob_text and "Ann's secret" not in bob_text
        assert "Ann's secret" in Path(ann_file).read_text(encoding="utf-8")

        # the guest has a private identity of their own
        guest.predict(text="A guest's question", temperature=0, max_new=4, api_name="/send")
        guest_id = guest_of(server, guest_cookie).user_id
        assert [c.title for c in service.conversations(guest_id)] == ["A guest's question"]
        assert "A guest's question" not in str(bob.predict(None, api_name="/load"))
        assert "A guest's question" not in str(ann.predict(None, api_name="/load"))
    finally:
        for c in (ann, bob, guest):
            c.close()


def test_api_keys_act_as_their_user_and_only_an_admin_loads_adapters(server) -> None:
    import openai

    accounts = AccountService(server.app.service.sessions)
    bob_key = accounts.create_key(accounts.actor("bob")).key
    ann_key = accounts.create_key(accounts.actor("ann")).key
    anonymous = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    bob = openai.OpenAI(base_url=f"{server.url}/v1", api_key=bob_key, max_retries=0)
    assert bob.models.list().data
    with pytest.raises(openai.PermissionDeniedError, match="admin"):
        bob.post("/adapters", body={"name": "x", "path": "/etc"}, cast_to=object)
    ann = openai.OpenAI(base_url=f"{server.url}/v1", api_key=ann_key, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="Only adapter directories under"):
        ann.post("/adapters", body={"name": "x", "path": "/etc"}, cast_to=object)
    accounts.revoke_key(accounts.actor("bob"), accounts.list_keys(accounts.actor("bob"))[0]["id"])
    with pytest.raises(openai.AuthenticationError):
        bob.models.list()


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


class FakeRequest:
    """What a handler reads of ``gr.Request``: cookies, headers and the page's session."""

    def __init__(self, cookie: str) -> None:
        name, _, value = cookie.partition("=")
        self.cookies, self.headers, self.session_hash = {name: value}, {}, "page-1"


def test_handlers_refuse_other_users_ids_behind_gradios_own_checks(server) -> None:
    """Gradio refuses a radio or dropdown value it never offered; the handlers and the store must
    refuse another user's ids on their own, for every caller that gets past that."""
    from chatlm.errors import NotFoundError, PermissionDeniedError
    from chatlm.identity.requests import Who
    from chatlm.ui.chat import ChatUI
    from chatlm.ui.knowledge import KnowledgePanel

    service = server.app.service
    who = Who(server.app.identity)
    ann_id = AccountService(service.sessions).actor("ann").user_id
    conv = service.new_conversation(ann_id)
    reply = service.send(ann_id, conv.id, "Ann's question", __import__(
        "chatlm.engine.params", fromlist=["SamplingParams"]).SamplingParams(temperature=0, max_new_tokens=3))
    reply.run()
    doc = service.library.load(actor=ann_id, conversation_id=conv.id, name="a.txt", text="Private. " * 40)
    bob = FakeRequest(session_cookie(server, BOB))
    ui, panel = ChatUI(service, who), KnowledgePanel(service, who)
    bob_conv = service.new_conversation(AccountService(service.sessions).actor("bob").user_id)
    before = counts(server)
    REFUSED = (NotFoundError, PermissionDeniedError)
    with pytest.raises(REFUSED):
        ui.open(conv.id, bob)
    with pytest.raises(REFUSED):
        ui.stop(conv.id, bob)
    with pytest.raises(REFUSED):
        ui.exclude(conv.id, True, bob)
    with pytest.raises(REFUSED):
        panel.reuse(bob_conv.id, doc.id, bob)  # ann's document into bob's own chat
    with pytest.raises(REFUSED):
        panel.documents(conv.id, bob)
    with pytest.raises(PermissionDeniedError, match="not signed in"):
        ui.open(conv.id, FakeRequest(f"{SESSION_COOKIE}=forged"))
    assert counts(server) == before
    assert service.library.documents(bob_conv.id) == []
    assert not service.conversation(ann_id, conv.id).exclude_from_training


def test_signing_in_keeps_what_the_browser_did_as_a_guest(server) -> None:
    first = httpx.get(f"{server.url}/", headers={"accept": "text/html"}, follow_redirects=False, timeout=30)
    token = first.cookies[GUEST_COOKIE]  # as the gate gives it to a browser
    guest = client_as(server, f"{GUEST_COOKIE}={token}")
    try:
        guest.predict(text="Asked before signing in", temperature=0, max_new=3, api_name="/send")
    finally:
        guest.close()
    accounts = AccountService(server.app.service.sessions)
    guest_id = guest_of(server, token).user_id
    form = httpx.get(f"{server.url}/login", cookies={GUEST_COOKIE: token}, timeout=30)
    keep = re.search(r'name="keep" value="([^"]+)"', form.text).group(1)  # the page's proof of the guest
    response = httpx.post(f"{server.url}/login", data={"name": BOB[0], "password": BOB[1], "keep": keep},
                          cookies={GUEST_COOKIE: token}, follow_redirects=False, timeout=30)
    assert response.status_code == 303 and f'{GUEST_COOKIE}=""' in response.headers.get("set-cookie", "")
    bob_id = accounts.actor("bob").user_id
    assert [c.title for c in server.app.service.conversations(bob_id)] == ["Asked before signing in"]
    assert server.app.service.conversations(guest_id) == []
    with db.transaction(server.app.service.sessions) as s:
        from chatlm.store.models import User

        assert s.get(User, guest_id) is None  # the guest identity is gone, its chat is bob's


# ---- the Admin and Account tabs' endpoints ------------------------------------------------------
def owned(server, name: str) -> dict[str, int]:
    """What the user ``name`` has in the database (all zero once they are gone)."""
    from sqlalchemy import text

    with db.transaction(server.app.service.sessions) as s:
        uid = s.execute(text("SELECT id FROM users WHERE name = :n"), {"n": name}).scalar()
        one = {"users": "SELECT count(*) FROM users WHERE id = :u",
               "conversations": "SELECT count(*) FROM conversations WHERE user_id = :u",
               "messages": "SELECT count(*) FROM messages JOIN conversations c ON c.id = conversation_id "
                           "WHERE c.user_id = :u",
               "ratings": "SELECT count(*) FROM ratings WHERE user_id = :u",
               "documents": "SELECT count(*) FROM documents WHERE user_id = :u",
               "api_keys": "SELECT count(*) FROM api_keys WHERE user_id = :u"}
        return {k: s.execute(text(q), {"u": uid}).scalar() for k, q in one.items()}


def users_table(server) -> list[tuple[Any, ...]]:
    """Every account as stored: name, role, password hash, sessions."""
    from sqlalchemy import text

    with db.transaction(server.app.service.sessions) as s:
        return [tuple(r) for r in s.execute(text(
            "SELECT name, is_admin, password_hash, session_generation FROM users ORDER BY id"))]


def rows(table: dict[str, Any]) -> dict[str, list[Any]]:
    """A Dataframe output as gradio_client returns it, by its first column."""
    return {row[0]: row for row in table["data"]}


def v1_status(server, key: str) -> int:
    return httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code


def test_only_an_admin_manages_users_and_a_refusal_changes_nothing(server) -> None:
    bob = client_as(server, session_cookie(server, BOB))
    guest = client_as(server, f"{GUEST_COOKIE}={issued_guest(server)}")
    try:
        bob.predict(text="Bob's question", temperature=0, max_new=3, api_name="/send")
        guest.predict(text="A guest's question", temperature=0, max_new=3, api_name="/send")  # its row
        before, bob_before = users_table(server), owned(server, "bob")
        for caller in (bob, guest):
            for args, name in (((), "/list_users"),
                               (("mallory", "mallory's password", True), "/add_user"),
                               (("bob", "admin"), "/set_role"),
                               (("ann", "taken over, ann"), "/set_user_password"),
                               (("ann", True), "/remove_user")):
                assert "Only an admin" in refused(caller.predict, *args, api_name=name), name
        assert users_table(server) == before  # no one added, promoted, re-passworded or removed
        assert owned(server, "bob") == bob_before and owned(server, "ann")["users"] == 1
        assert sign_in(server, *ANN).status_code == 303  # ann's own password still works
        assert not AccountService(server.app.service.sessions).actor("bob").is_admin
    finally:
        bob.close()
        guest.close()


def test_an_admin_adds_a_user_sets_roles_and_passwords_and_removes_one(server) -> None:
    from sqlalchemy import text

    ann = client_as(server, session_cookie(server, ANN))
    accounts = AccountService(server.app.service.sessions)
    try:
        table, names = ann.predict(api_name="/list_users")
        assert rows(table)["ann"][1:4] == ["admin", "", "set"] and rows(table)["bob"][1] == "user"
        assert [value for _, value in names["choices"]] == ["ann", "bob"]  # the picker offers both
        status, table, *_ = ann.predict("carl", "carl's password", False, api_name="/add_user")
        assert "Added **carl** as a user" in status and rows(table)["carl"][1:6] == ["user", "", "set", "", 0]
        assert sign_in(server, "carl", "carl's password").status_code == 303  # carl can sign in at once
        guest_name = guest_of(server, issued_guest(server)).name
        before = users_table(server)
        status, *_ = ann.predict("Carl", "another password", False, api_name="/add_user")
        assert "Not added: There is already a user named 'Carl'" in status
        status, *_ = ann.predict("dora", "short", False, api_name="/add_user")
        assert "Not added: A password needs at least 8" in status
        status, *_ = ann.predict("ann", "user", api_name="/set_role")  # the only admin stays one
        assert "Role not changed: ann is the only admin" in status
        status, *_ = ann.predict(guest_name, "admin", api_name="/set_role")  # a cookie is no admin
        assert "Role not changed: A guest cannot be an admin" in status
        assert users_table(server) == before

        status, table, _ = ann.predict("carl", "admin", api_name="/set_role")
        assert "carl** is now an admin" in status and rows(table)["carl"][1] == "admin"
        assert accounts.actor("carl").is_admin

        # a locked-out bob: a new password lets him in again and the table no longer says locked
        with db.transaction(server.app.service.sessions) as s:
            s.execute(text("INSERT INTO sign_in_failures (name_key, failures, last_failed_at, locked_until) "
                           "VALUES (:k, 0, '2998-01-01 00:00:00', '2999-01-01 00:00:00')"), {"k": name_key("bob")})
        assert rows(ann.predict(api_name="/list_users")[0])["bob"][4] == "locked"
        assert sign_in(server, *BOB).status_code == 401
        status, table, _, box = ann.predict("bob", "bob's new password", api_name="/set_user_password")
        assert "New password set for **bob**" in status and rows(table)["bob"][4] == "" and box == ""
        assert sign_in(server, "bob", "bob's new password").status_code == 303
        assert sign_in(server, *BOB).status_code == 401  # the old one is gone

        # removal needs the box ticked, then takes carl's data and nobody else's
        carl = client_as(server, session_cookie(server, ("carl", "carl's password")))
        try:
            carl.predict(text="Carl's question", temperature=0, max_new=3, api_name="/send")
        finally:
            carl.close()
        carl_had, bob_had = owned(server, "carl"), owned(server, "bob")
        assert carl_had["conversations"] == 1 and carl_had["messages"] >= 2
        status, *_ = ann.predict("carl", False, api_name="/remove_user")
        assert "Not removed: Tick" in status and owned(server, "carl") == carl_had
        status, table, _, confirm = ann.predict("carl", True, api_name="/remove_user")
        assert "Removed **carl** and all their data" in status and confirm is False
        assert "carl" not in rows(table) and set(owned(server, "carl").values()) == {0}
        assert owned(server, "bob") == bob_had and sign_in(server, "carl", "carl's password").status_code == 401
    finally:
        ann.close()


def test_a_user_manages_their_own_keys_and_password_only(server) -> None:
    accounts = AccountService(server.app.service.sessions)
    ann_key = accounts.create_key(accounts.actor("ann"), "ann's")
    bob = client_as(server, session_cookie(server, BOB))
    guest_cookie = issued_guest(server)
    guest = client_as(server, f"{GUEST_COOKIE}={guest_cookie}")
    try:
        status, table, _, new_key = bob.predict("laptop", api_name="/create_key")
        key = new_key["value"]
        assert key.startswith("clm_") and "shown this once" in status
        assert v1_status(server, key) == 200  # the key shown works for /v1, as bob
        listed, _ = bob.predict(api_name="/list_keys")
        assert key not in str(listed) and [r[1:3] for r in listed["data"]] == [["laptop", key[:12] + "…"]]
        mine = listed["data"][0][0]

        # another user's key id is refused and keeps working; the guest gets no key
        status, *_ = bob.predict(ann_key.id, api_name="/revoke_key")
        assert f"Not revoked: No API key {ann_key.id} of yours" in status
        assert v1_status(server, ann_key.key) == 200
        status, *_ = guest.predict("mine", api_name="/create_key")
        assert "No key made: Guests" in status
        assert "Guests have no account" in refused(guest.predict, api_name="/list_keys")
        assert len(accounts.list_keys(guest_of(server, guest_cookie))) == 0

        status, table, _ = bob.predict(mine, api_name="/revoke_key")
        assert f"Key {mine} is revoked" in status and rows(table)[mine][5] == "revoked"
        assert v1_status(server, key) == 401

        # the password: the current one is checked, the new one typed twice; then every session ends
        status, *_ = bob.predict("not bob's", "bob's next password", "bob's next password",
                                 api_name="/change_password")
        assert "Password not changed: Your current password is wrong" in status
        status, *_ = bob.predict(BOB[1], "bob's next password", "bob's next pasword", api_name="/change_password")
        assert "Password not changed: The two new passwords differ" in status
        assert sign_in(server, *BOB).status_code == 303
        status, *_ = bob.predict(BOB[1], "bob's next password", "bob's next password", api_name="/change_password")
        assert "Password changed" in status
        assert sign_in(server, *BOB).status_code == 401
        assert sign_in(server, "bob", "bob's next password").status_code == 303
        assert "not signed in" in refused(bob.predict, api_name="/list_keys")  # this session ended too
        assert sign_in(server, *ANN).status_code == 303  # ann's password is untouched
    finally:
        bob.close()
        guest.close()


def test_deleting_ones_account_deletes_ones_own_data_only(server) -> None:
    service = server.app.service
    accounts = AccountService(service.sessions)
    ann = client_as(server, session_cookie(server, ANN))
    bob = client_as(server, session_cookie(server, BOB))
    try:
        for client, who in ((ann, "Ann"), (bob, "Bob")):
            client.predict(text=f"{who}'s question", temperature=0, max_new=3, api_name="/send")
            client.predict("laptop", api_name="/create_key")
        bob_id = accounts.actor("bob").user_id
        conv = service.conversations(bob_id)[0]
        service.library.load(actor=bob_id, conversation_id=conv.id, name="bob.txt", text="Bob's notes. " * 40)
        answer = [m for m, _ in service.history(bob_id, conv.id) if m.role == "assistant"][-1]
        service.rate(bob_id, answer.id, 1)
        ann_had, bob_had = owned(server, "ann"), owned(server, "bob")
        assert all(bob_had.values()) and ann_had["conversations"] == 1

        status, *_ = bob.predict(False, BOB[1], api_name="/delete_account")
        assert "Not deleted: Tick" in status
        status, *_ = bob.predict(True, "not bob's", api_name="/delete_account")
        assert "Not deleted: Your current password is wrong" in status
        status, *_ = ann.predict(True, ANN[1], api_name="/delete_account")  # the only admin stays
        assert "Not deleted: ann is the only admin" in status
        assert owned(server, "bob") == bob_had and owned(server, "ann") == ann_had

        status, confirm, password = bob.predict(True, BOB[1], api_name="/delete_account")
        assert "Your account and all your data are deleted" in status and (confirm, password) == (False, "")
        assert set(owned(server, "bob").values()) == {0}
        assert owned(server, "ann") == ann_had  # ann's chat, answer and key are all still there
        assert sign_in(server, *BOB).status_code == 401
        assert "not signed in" in refused(bob.predict, None, api_name="/load")
        assert "Ann's question" in str(ann.predict(None, api_name="/load"))
    finally:
        ann.close()
        bob.close()


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


ADMIN_ENDPOINTS = {"/start_round", "/promote_adapter", "/rollback_adapter", "/compare", "/list_users", "/add_user",
                   "/set_role", "/set_user_password", "/remove_user"}


def ann_snapshot(server) -> dict[str, Any]:
    """Everything of ann's a stranger might try to read or change, and what only an admin changes."""
    from sqlalchemy import text

    with db.transaction(server.app.service.sessions) as s:
        def q(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in s.execute(text(sql))]

        return {
            "users": q("SELECT id, name, is_admin, password_hash, session_generation FROM users "
                       "WHERE is_guest = 0"),
            "conversations": q("SELECT c.id, c.title, c.exclude_from_training, c.active_leaf_id FROM conversations c "
                               "JOIN users u ON u.id = c.user_id WHERE u.name = 'ann'"),
            "messages": q("SELECT m.id, m.content, m.status FROM messages m JOIN conversations c "
                          "ON c.id = m.conversation_id JOIN users u ON u.id = c.user_id WHERE u.name = 'ann'"),
            "ratings": q("SELECT r.message_id, r.value, r.comment FROM ratings r JOIN users u ON u.id = r.user_id "
                         "WHERE u.name = 'ann'"),
            "documents": q("SELECT cd.conversation_id, cd.document_id FROM conversation_documents cd JOIN "
                           "conversations c ON c.id = cd.conversation_id JOIN users u ON u.id = c.user_id "
                           "WHERE u.name = 'ann'"),
            "keys": q("SELECT k.id, k.revoked_at FROM api_keys k JOIN users u ON u.id = k.user_id "
                      "WHERE u.name = 'ann'"),
            "rounds": q("SELECT id FROM training_runs"), "adapters": q("SELECT name, is_active FROM adapters"),
        }


def test_every_named_endpoint_as_another_user_and_as_a_guest(server) -> None:
    """The isolation matrix over every named endpoint ``view_api`` lists: called by bob and by a guest
    with ann's ids wherever an endpoint takes an id, none reads or changes anything of ann's, and
    each admin endpoint is refused. A new endpoint fails this test until it is put in the matrix."""
    from chatlm.engine.params import SamplingParams

    service = server.app.service
    accounts = AccountService(service.sessions)
    ann = accounts.actor("ann")
    conv = service.new_conversation(ann)
    service.send(ann, conv.id, "Ann's private question", SamplingParams(temperature=0, max_new_tokens=3)).run()
    answer = service.history(ann, conv.id)[-1][0]
    service.rate(ann, answer.id, 1, comment="ann's comment")
    doc = service.library.load(actor=ann.user_id, conversation_id=conv.id, name="ann.txt",
                               text="Ann's private notes about the launch. " * 20)
    key = accounts.create_key(ann, "ann's key")
    args: dict[str, tuple[Any, ...]] = {
        "/load_document": (None, "A text the caller pastes. " * 5, "pasted"), "/remove_documents": ([doc.id],),
        "/reuse_document": (doc.id,), "/rate_detail": ("Dislike", "wrong", "c", "better"),
        "/withdraw_rating": (), "/export_dataset": ("messages",),
        "/start_round": ("auto", 0, 1, 0, False, None, False), "/promote_adapter": ("base model", None),
        "/rollback_adapter": (None,), "/compare": ("Hi", "base model", "base model"), "/list_users": (),
        "/add_user": ("mallory", "long enough password", True), "/set_role": ("ann", "user"),
        "/set_user_password": ("ann", "taken over, now"), "/remove_user": ("ann", True), "/list_keys": (),
        "/create_key": ("k",), "/revoke_key": (key.id,),
        "/change_password": ("wrong", "new password 1", "new password 1"),
        "/delete_account": (True, "wrong password"), "/send": ("Hello from the caller",), "/retry": (), "/continue": (),
        "/load": (conv.id,), "/new": (), "/open": (conv.id,), "/delete": (conv.id,), "/undo": (conv.id,),
        "/rename": (conv.id, "renamed by a stranger"),
        "/stop": (), "/rate": (), "/exclude": (True,),
    }
    before = ann_snapshot(server)
    for cookie in (session_cookie(server, BOB), f"{GUEST_COOKIE}={issued_guest(server)}"):
        caller = client_as(server, cookie)
        try:
            endpoints = set(caller.view_api(return_format="dict", print_info=False)["named_endpoints"])
            assert endpoints == set(args), f"put new endpoints in the matrix: {endpoints ^ set(args)}"
            outputs = {}
            for name, values in args.items():
                try:
                    outputs[name] = caller.predict(*values, api_name=name)
                except Exception as exc:
                    outputs[name] = exc
                    continue
                assert name not in ADMIN_ENDPOINTS, f"{name} answered a non-admin: {outputs[name]!r}"
            for name in ADMIN_ENDPOINTS:
                assert "Only an admin" in str(outputs[name]), (name, outputs[name])
            assert "Ann's private" not in repr(outputs) and "ann's comment" not in repr(outputs)
            exported = outputs["/export_dataset"]
            assert not isinstance(exported, Exception)
            assert "Ann's private" not in Path(exported[0]).read_text(encoding="utf-8")
        finally:
            caller.close()
        assert ann_snapshot(server) == before


def test_every_v1_route_for_each_kind_of_caller(server) -> None:
    """/v1 acts only on a key: an admin's, a user's, none, a guest's cookie, a revoked key."""
    accounts = AccountService(server.app.service.sessions)
    admin_key = accounts.create_key(accounts.actor("ann")).key
    user_key = accounts.create_key(accounts.actor("bob")).key
    revoked = accounts.create_key(accounts.actor("bob"))
    accounts.revoke_key(accounts.actor("bob"), revoked.id)
    model = server.app.service.backend.model_id
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    adapter = {"name": "x", "path": str(server.settings.data_dir / "adapters" / "missing")}
    callers = {"admin": {"Authorization": f"Bearer {admin_key}"}, "user": {"Authorization": f"Bearer {user_key}"},
               "anonymous": {}, "guest": {"Cookie": f"{GUEST_COOKIE}={issued_guest(server)}"},
               "revoked": {"Authorization": f"Bearer {revoked.key}"}}
    expected = [  # route, body, status for admin, user, anonymous, guest, revoked
        ("GET", "/v1/models", None, (200, 200, 401, 401, 401)),
        ("POST", "/v1/chat/completions", chat, (200, 200, 401, 401, 401)),
        ("POST", "/v1/adapters", adapter, (400, 403, 401, 401, 401)),  # admin: the folder is missing
        ("GET", "/v1/nowhere", None, (404, 404, 401, 401, 401)),
    ]
    before = counts(server)
    for method, path, body, statuses in expected:
        got = tuple(httpx.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=60).status_code
                    for headers in callers.values())
        assert got == statuses, (method, path, dict(zip(callers, got, strict=True)))
    assert counts(server) == before  # the API stores nothing, and a refusal changes nothing


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
