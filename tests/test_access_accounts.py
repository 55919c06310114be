"""The Admin and Account tabs' endpoints on a running server: only an admin lists, adds, promotes,
re-passwords and removes users; a user manages their own API keys and password and deletes their
own account; each change touches the one user's data and nobody else's."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from chatlm.identity.accounts import AccountService
from chatlm.identity.passwords import name_key
from chatlm.identity.requests import GUEST_COOKIE
from chatlm.store import db
from tests.access import client_as, guest_of, issued_guest, refused, session_cookie, sign_in
from tests.conftest import ANN, BOB

pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow


@pytest.fixture
def server(accounts_server):
    return accounts_server


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
        bob_actor = accounts.actor("bob")
        conv = service.conversations(bob_actor)[0]
        service.library.load(actor=bob_actor, conversation_id=conv.id, name="bob.txt", text="Bob's notes. " * 40)
        answer = [m for m, _ in service.history(bob_actor, conv.id) if m.role == "assistant"][-1]
        service.rate(bob_actor, answer.id, 1)
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
