"""Accounts on a real SQLite file: passwords (argon2), lockout, roles, removal with data, API keys,
guests, and the `users` commands of the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from chatlm.errors import InputError, NotFoundError, PermissionDeniedError
from chatlm.identity.accounts import AccountService
from chatlm.identity.lockout import LOCK_AFTER, SLOW_AFTER, SignInError
from chatlm.store import db, repo
from chatlm.store.models import Conversation, Document, Rating, User
from tests.conftest import REPO
from tests.seeding import StubEmbedder, add_turn


@pytest.fixture
def sessions(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'chatlm.db'}"
    db.upgrade(url)
    return db.make_sessionmaker(db.make_engine(url))


@pytest.fixture
def accounts(sessions) -> AccountService:
    waits: list[float] = []
    service = AccountService(sessions, sleep=waits.append)
    service.waits = waits  # type: ignore[attr-defined]
    return service


def test_first_account_is_admin_and_passwords_are_argon2_hashes(accounts, sessions) -> None:
    with db.transaction(sessions) as s:
        repo.get_or_create_user(s)  # the local user of a server that ran before accounts existed
    ann = accounts.add_user(None, "ann", "correct horse")
    bob = accounts.add_user(None, "bob", "battery staple")
    assert ann.is_admin and not bob.is_admin
    with db.transaction(sessions) as s:
        stored = s.scalar(select(User.password_hash).where(User.name == "ann"))
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert accounts.sign_in("ann", "correct horse") == ann
    with pytest.raises(SignInError, match="Wrong user name or password"):
        accounts.sign_in("ann", "correct horsE")
    with pytest.raises(SignInError, match="Wrong user name or password"):
        accounts.sign_in("nobody", "correct horse")  # the same words: no way to tell names apart
    with pytest.raises(InputError, match="already"):
        accounts.add_user(None, "Ann", "another one")
    with pytest.raises(InputError, match="at least 8"):
        accounts.add_user(None, "cid", "short")
    with pytest.raises(InputError, match="user name"):
        accounts.add_user(None, "<script>", "long enough")


def test_wrong_passwords_slow_down_then_lock_until_a_new_password(accounts) -> None:
    accounts.add_user(None, "ann", "correct horse")
    for _ in range(LOCK_AFTER):
        with pytest.raises(SignInError):
            accounts.sign_in("ann", "guess")
    # the first SLOW_AFTER wrong tries answer at once, each later one waits a second longer
    assert accounts.waits == [float(i) for i in range(1, LOCK_AFTER - SLOW_AFTER + 1)]  # type: ignore[attr-defined]
    with pytest.raises(SignInError, match="locked"):
        accounts.sign_in("ann", "correct horse")  # even the right password, while locked
    accounts.set_password(None, "ann", "a new password")
    assert accounts.sign_in("ann", "a new password").name == "ann"
    with pytest.raises(SignInError):
        accounts.sign_in("ann", "correct horse")


def test_roles_only_admins_manage_others_and_the_last_admin_stays(accounts) -> None:
    ann = accounts.add_user(None, "ann", "correct horse")
    bob = accounts.add_user(ann, "bob", "battery staple")
    with pytest.raises(PermissionDeniedError):
        accounts.add_user(bob, "eve", "long enough")
    with pytest.raises(PermissionDeniedError):
        accounts.set_role(bob, "bob", "admin")
    with pytest.raises(PermissionDeniedError):
        accounts.set_password(bob, "ann", "taken over")
    with pytest.raises(PermissionDeniedError):
        accounts.list_users(bob)
    accounts.set_password(bob, "bob", "my own new one")  # one's own password is one's own
    with pytest.raises(InputError, match="only admin"):
        accounts.set_role(ann, "ann", "user")
    accounts.set_role(ann, "bob", "admin")
    accounts.set_role(None, "ann", "user")
    assert [(u.name, u.is_admin) for u in accounts.list_users(accounts.actor("bob"))] == [
        ("ann", False), ("bob", True)]


def test_removing_an_account_deletes_its_data_and_keeps_others(accounts, sessions) -> None:
    from chatlm.chat.library import Library

    ann = accounts.add_user(None, "ann", "correct horse")
    bob = accounts.add_user(None, "bob", "battery staple")
    add_turn(sessions, bob.user_id, "Why?", [("Because.", -1, "Because it is.")])
    add_turn(sessions, ann.user_id, "How?", [("Like so.", 1, None)])
    with db.transaction(sessions) as s:
        conv = repo.create_conversation(s, user_id=bob.user_id).id
    library = Library(sessions, embedder=StubEmbedder(), background=False)
    library.load(actor=bob, conversation_id=conv, name="bob.txt", data=b"Bob's private notes. " * 30)
    with pytest.raises(PermissionDeniedError):
        accounts.remove_user(accounts.actor("bob"), "ann")
    accounts.remove_user(accounts.actor("bob"), "bob")
    with db.transaction(sessions) as s:
        assert s.scalar(select(func.count()).select_from(Conversation)) == 1
        assert s.scalar(select(func.count()).select_from(Rating)) == 1
        assert s.scalar(select(func.count()).select_from(Document)) == 0
        assert [u.name for u in s.scalars(select(User))] == ["ann"]
    with pytest.raises(SignInError):
        accounts.sign_in("bob", "battery staple")


def test_api_keys_are_shown_once_stored_hashed_and_revocable(accounts, sessions) -> None:
    ann = accounts.add_user(None, "ann", "correct horse")
    bob = accounts.add_user(None, "bob", "battery staple")
    new = accounts.create_key(ann, "laptop")
    assert new.key.startswith("clm_") and len(new.key) > 40
    with db.transaction(sessions) as s:
        stored = [tuple(r) for r in s.execute(text("SELECT prefix, key_hash FROM api_keys"))]
    assert all(new.key not in "".join(r) for r in stored)
    assert accounts.key_actor(new.key) == ann
    assert accounts.key_actor(new.key[:-1] + "x") is None
    assert accounts.key_actor("not a key") is None
    with pytest.raises(NotFoundError):
        accounts.revoke_key(bob, new.id)  # another user's key id, tried on purpose
    assert accounts.key_actor(new.key) == ann
    accounts.revoke_key(ann, new.id)
    assert accounts.key_actor(new.key) is None
    assert accounts.list_keys(ann)[0]["revoked"] and accounts.list_keys(bob) == []


def test_a_guest_is_bound_to_its_token(accounts) -> None:
    first, token = accounts.guest()
    again, same = accounts.guest(token)
    other, _ = accounts.guest()
    assert first == again and same == token and first.is_guest and not first.is_admin
    assert other.user_id != first.user_id
    with db.transaction(accounts.sessions) as s:
        users = s.scalar(select(func.count()).select_from(User))
    with pytest.raises(InputError):
        accounts.guest("x" * 10)  # not a token of ours in shape: refused, no row made
    with db.transaction(accounts.sessions) as s:
        assert s.scalar(select(func.count()).select_from(User)) == users
    with pytest.raises(PermissionDeniedError):
        accounts.create_key(first)
    with pytest.raises(SignInError):
        accounts.sign_in(first.name, "")


@pytest.mark.slow  # runs the command line in a subprocess
def test_users_commands(tmp_path: Path) -> None:
    env = {**os.environ, "CHATLM_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chatlm", "users", *args], input=stdin, env=env,
                              capture_output=True, text=True, timeout=120, cwd=REPO)

    assert cli("add", "ann", stdin="correct horse\n").stdout.strip() == "user ann created (admin)"
    assert "user bob created (user)" in cli("add", "bob", stdin="battery staple\n").stdout
    short = cli("add", "cid", stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    listing = cli("list").stdout
    assert "ann" in listing and "bob" in listing and "cid" not in listing
    assert cli("role", "bob", "admin").returncode == 0
    assert cli("passwd", "bob", stdin="a new password\n").returncode == 0
    key = cli("key", "create", "bob", "--label", "ci")
    assert key.returncode == 0 and key.stdout.strip().startswith("clm_") and "shown once" in key.stderr
    refused = cli("remove", "ann")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert cli("remove", "ann", "--yes").returncode == 0
    unknown = cli("passwd", "nobody", stdin="whatever long\n")
    assert unknown.returncode == 2 and "No user named 'nobody'" in unknown.stderr
    sessions = db.make_sessionmaker(db.make_engine(f"sqlite:///{tmp_path / 'data' / 'chatlm.db'}"))
    accounts = AccountService(sessions)
    assert accounts.sign_in("bob", "a new password").is_admin
    assert accounts.key_actor(key.stdout.strip()).name == "bob"


def test_the_admin_from_the_environment_is_made_and_kept(accounts) -> None:
    """A Space has no shell: CHATLM_ADMIN_NAME/CHATLM_ADMIN_PASSWORD make its first admin."""
    made = accounts.ensure_admin("owner", "space secret 1")
    assert made.is_admin and accounts.sign_in("owner", "space secret 1") == made
    accounts.set_role(None, "owner", "admin")
    accounts.add_user(None, "other", "long enough")
    accounts.set_role(None, "other", "admin")
    accounts.set_role(None, "owner", "user")
    again = accounts.ensure_admin("owner", "space secret 2")  # a new secret on restart
    assert again.is_admin and again.user_id == made.user_id
    with pytest.raises(SignInError):
        accounts.sign_in("owner", "space secret 1")
