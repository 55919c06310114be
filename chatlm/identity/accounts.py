"""Accounts: who a user is, how they prove it, and what they may do.

The one place that creates users, checks passwords and API keys, and decides roles; the hashing is
``passwords``, the slow-down and lock after wrong passwords ``lockout``. The waits are the caller's:
``sign_in`` sleeps in its thread (the shell, a Gradio handler), ``sign_in_async`` awaits them and
hashes in a worker thread, so the server's event loop never stops for a guesser.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chatlm.errors import InputError, NotFoundError, PermissionDeniedError
from chatlm.identity import lockout
from chatlm.identity.lockout import SignInError
from chatlm.identity.passwords import hash_password, key_hash, name_key, rehashed, verifies
from chatlm.store.db import transaction
from chatlm.store.models import (
    ApiKey,
    Base,
    Conversation,
    ConversationDocument,
    Document,
    SignInFailure,
    User,
    utcnow,
)
from chatlm.store.repo import LOCAL_USER

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
HASHES_AT_ONCE = 4
"""Password checks run at once by ``sign_in_async`` (argon2id takes 64 MiB each)."""
KEY_PREFIX = "clm_"
GUEST_PREFIX = "guest-"
GUEST_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")
GUEST_DAYS = 365
"""How long a guest token the server issued is honoured (its cookie lives as long)."""


def new_guest_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Actor:
    """The user a request acts as, decided on the server (never taken from the client)."""

    user_id: int
    name: str
    is_admin: bool = False
    is_guest: bool = False

    @classmethod
    def of(cls, user: User) -> Actor:
        return cls(user_id=user.id, name=user.name, is_admin=user.is_admin, is_guest=user.is_guest)


@dataclass(frozen=True)
class UserInfo:
    """A row of ``users list``: what an admin needs to see, never a hash."""

    name: str
    is_admin: bool
    is_guest: bool
    has_password: bool
    locked: bool
    conversations: int
    created_at: datetime


@dataclass(frozen=True)
class NewKey:
    """A key just created: ``key`` is shown this once and never stored."""

    id: int
    name: str
    prefix: str
    key: str


def require_admin(actor: Actor) -> None:
    """The admins-only rule, for every service that has admin-only calls."""
    if not actor.is_admin:
        raise PermissionDeniedError("Only an admin may do that.")


class AccountService:
    """Users, passwords, roles and API keys. Calls that change someone else need an admin actor."""

    def __init__(self, sessions: sessionmaker[Session], *, sleep: Callable[[float], None] = time.sleep,
                 pause: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.sessions = sessions
        self.sleep = sleep
        """Waits before answering a slowed-down ``sign_in`` (a test passes a recorder)."""
        self.pause = pause or anyio.sleep
        """The same wait for ``sign_in_async``, awaited (a test passes an async recorder)."""
        self._hashing: Any = None

    # ---- reading ------------------------------------------------------------------------------
    def list_users(self, actor: Actor) -> list[UserInfo]:
        self._admin(actor)
        with transaction(self.sessions) as s:
            counts = dict(s.execute(select(Conversation.user_id, func.count())
                                    .where(Conversation.deleted_at.is_(None))
                                    .group_by(Conversation.user_id)).tuples().all())
            now = utcnow()
            locked = set(s.scalars(select(SignInFailure.name_key).where(SignInFailure.locked_until > now)))
            return [UserInfo(name=u.name, is_admin=u.is_admin, is_guest=u.is_guest,
                             has_password=u.password_hash is not None, locked=name_key(u.name) in locked,
                             conversations=counts.get(u.id, 0), created_at=u.created_at)
                    for u in s.scalars(select(User).order_by(User.id))]

    def has_password(self, actor: Actor) -> bool:
        """False for an account that signs in with Hugging Face (or was made without a password)."""
        with transaction(self.sessions) as s:
            user = s.get(User, actor.user_id)
            return bool(user is not None and user.password_hash)

    def actor(self, name: str) -> Actor:
        with transaction(self.sessions) as s:
            return Actor.of(self._user(s, name))

    # ---- changing -----------------------------------------------------------------------------
    def add_user(self, actor: Actor | None, name: str, password: str | None = None, *,
                 admin: bool = False) -> Actor:
        """A new account. ``actor`` None is the operator at the shell (the CLI); the first account
        made on a server with no accounts yet becomes admin, so there is always one."""
        if actor is not None:
            self._admin(actor)
        if not NAME.fullmatch(name) or name == LOCAL_USER or name.startswith(GUEST_PREFIX):
            raise InputError("A user name is 1-64 letters, digits or . _ @ - (starting with a letter or "
                             f"digit), and not {LOCAL_USER!r} or {GUEST_PREFIX}….")
        hashed = hash_password(password) if password is not None else None
        with transaction(self.sessions) as s:
            if s.scalar(select(User.id).where(func.lower(User.name) == name.lower())) is not None:
                raise InputError(f"There is already a user named {name!r}.")
            first = s.scalar(select(func.count()).select_from(User).where(
                User.is_guest.is_(False), User.name != LOCAL_USER)) == 0
            user = User(name=name, password_hash=hashed, is_admin=admin or first)
            s.add(user)
            s.flush()
            return Actor.of(user)

    def ensure_admin(self, name: str, password: str) -> Actor:
        """The operator's admin account from the environment: made if missing, else made admin with
        this password (a restart with a new secret changes it)."""
        with transaction(self.sessions) as s:
            user = s.scalar(select(User).where(User.name == name, User.is_guest.is_(False)))
            stored = user.password_hash if user is not None else None
        if user is None:
            return self.add_user(None, name, password, admin=True)
        if not verifies(stored, password):  # the same secret on a restart keeps the admin signed in
            self.set_password(None, name, password)
        self.set_role(None, name, "admin")
        return self.actor(name)

    def set_password(self, actor: Actor | None, name: str, password: str) -> None:
        """Change a password (one's own, or anyone's for an admin); it also lifts a lockout and ends
        every session of the account (API keys stay: they are revoked on their own)."""
        hashed = hash_password(password)
        with transaction(self.sessions) as s:
            user = self._user(s, name)
            if actor is not None and actor.user_id != user.id:
                self._admin(actor)
            user.password_hash = hashed
            user.session_generation += 1
            lockout.lift(s, name)

    def end_sessions(self, actor: Actor | None, name: str) -> None:
        """Sign the account out of every browser (its own sign-out, or an admin's for anyone):
        each saved session cookie is refused from now on. API keys are not sessions and stay."""
        with transaction(self.sessions) as s:
            user = self._user(s, name)
            if actor is not None and actor.user_id != user.id:
                self._admin(actor)
            user.session_generation += 1

    def set_role(self, actor: Actor | None, name: str, role: str) -> None:
        if role not in ("admin", "user"):
            raise InputError("The role is 'admin' or 'user'.")
        if actor is not None:
            self._admin(actor)
        with transaction(self.sessions) as s:
            user = self._user(s, name)
            if role == "user" and user.is_admin and self._admins(s) == 1:
                raise InputError(f"{name} is the only admin; make another user admin first.")
            user.is_admin = role == "admin"

    def remove_user(self, actor: Actor | None, name: str) -> None:
        """Delete the account with everything it owns (conversations, messages, ratings, texts,
        keys): the database cascades, and the texts they loaded go too unless another user's chat
        uses them. A user may remove themselves; an admin anyone but the last admin."""
        with transaction(self.sessions) as s:
            user = self._user(s, name)
            if actor is not None and actor.user_id != user.id:
                self._admin(actor)
            if user.is_admin and self._admins(s) == 1:
                raise InputError(f"{name} is the only admin; make another user admin first.")
            shared = (select(ConversationDocument.document_id).join(Conversation)
                      .where(Conversation.user_id != user.id))
            s.execute(delete(Document).where(Document.user_id == user.id, Document.id.not_in(shared)))
            s.delete(user)

    # ---- proving who one is -------------------------------------------------------------------
    def sign_in(self, name: str, password: str) -> Actor:
        """The actor for a right name and password; otherwise a SignInError that does not say
        whether the name exists. Wrong attempts in a row are slowed down, then locked out. Blocks
        for the slow-down: for threads (the shell, a Gradio handler), not the event loop."""
        wait = lockout.count_attempt(self.sessions, name, password)
        if wait:
            self.sleep(wait)
        return self._check(name, password)

    async def sign_in_async(self, name: str, password: str) -> Actor:
        """``sign_in`` for the server's event loop: the slow-down is awaited and the database and
        the hash run in worker threads (at most ``HASHES_AT_ONCE`` hashes), so a guesser being
        slowed down holds up no one else's request."""
        if self._hashing is None:
            self._hashing = anyio.CapacityLimiter(HASHES_AT_ONCE)
        wait = await anyio.to_thread.run_sync(lockout.count_attempt, self.sessions, name, password)
        if wait:
            await self.pause(wait)
        return await anyio.to_thread.run_sync(self._check, name, password, limiter=self._hashing)

    def _check(self, name: str, password: str) -> Actor:
        """Verify the password (an unknown name verifies against a dummy hash: the same work), then
        clear the name's record, or lock the name after ``LOCK_AFTER`` wrong ones."""
        with transaction(self.sessions) as s:
            user = s.scalar(select(User).where(User.name == name, User.is_guest.is_(False)))
            stored = user.password_hash if user is not None else None
        ok = verifies(stored, password)
        with transaction(self.sessions) as s:  # the failure is committed before it is said
            row = s.get(User, user.id) if user is not None and ok else None
            lockout.settle(s, name, signed_in=row is not None)
            if row is not None:
                if (new_hash := rehashed(row.password_hash, password)) is not None:
                    row.password_hash = new_hash
                return Actor.of(row)
        raise SignInError(lockout.WRONG)

    def hf_user(self, username: str, admins: tuple[str, ...] = ()) -> Actor:
        """The account of a Hugging Face user who has just signed in (made on first sign-in; an
        admin while their name is in ``admins``). An account of that name that has a password is
        someone else's, made here with ``users add``: it is refused, never taken over."""
        if not NAME.fullmatch(username) or username == LOCAL_USER or username.startswith(GUEST_PREFIX):
            raise SignInError("This Hugging Face account name cannot be used here.")
        admin = username.lower() in {a.lower() for a in admins}

        def account(s: Session) -> Actor:
            user = s.scalar(select(User).where(func.lower(User.name) == username.lower()))
            if user is not None and (user.is_guest or user.password_hash):
                raise SignInError(f"An account named {username!r} that signs in with a password "
                                  "exists here; an admin must rename or remove it first.")
            if user is None:
                user = User(name=username, is_admin=admin)
                s.add(user)
                s.flush()
            elif admin:
                user.is_admin = True
            return Actor.of(user)

        return self._made_once(account)  # two first sign-ins of one user may race to make the row

    def guest(self, token: str | None = None) -> tuple[Actor, str]:
        """The guest identity bound to a random token the server issued (a new token when None):
        returns the actor and the token. The token is the only secret, so whoever holds it is that
        guest; the row is made on first use. The caller has checked that the server issued it
        (``Identity.guest_token``: its signature); one not of our shape is refused, making no row."""
        if token is None:
            token = new_guest_token()
        if not GUEST_TOKEN.fullmatch(token):
            raise InputError("Not a guest token of this server.")
        name = GUEST_PREFIX + key_hash(token)[:32]

        def guest_row(s: Session) -> Actor:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                user = User(name=name, is_guest=True)
                s.add(user)
                s.flush()
            return Actor.of(user)

        return self._made_once(guest_row), token  # two first requests of one browser may race

    def _made_once(self, work: Callable[[Session], Actor]) -> Actor:
        """Run a transaction that finds a user row or makes it on first use; when a concurrent twin
        made it first (the UNIQUE name fails), run it once more, and it finds that row."""
        try:
            with transaction(self.sessions) as s:
                return work(s)
        except IntegrityError:
            with transaction(self.sessions) as s:
                return work(s)

    def adopt_guest(self, token: str, actor: Actor) -> int:
        """Signing in keeps what the browser did as a guest: the guest's conversations, ratings and
        texts become the user's, and the guest identity is gone. Returns the conversations moved.
        Only a guest made within ``GUEST_DAYS`` is adopted; the caller has checked that the server
        issued the token to this browser's sign-in form (``Identity.keeps``)."""
        if not token or not GUEST_TOKEN.fullmatch(token) or actor.is_guest:
            return 0
        name = GUEST_PREFIX + key_hash(token)[:32]
        with transaction(self.sessions) as s:
            guest = s.scalar(select(User).where(User.name == name, User.is_guest.is_(True)))
            if guest is None or guest.created_at < utcnow() - timedelta(days=GUEST_DAYS):
                return 0
            moved = int(s.scalar(select(func.count()).select_from(Conversation)
                                 .where(Conversation.user_id == guest.id)) or 0)
            for table in Base.metadata.sorted_tables:  # every table that names its owner
                column = table.c.get("user_id")
                if column is not None and any(fk.column.table.name == "users" for fk in column.foreign_keys):
                    s.execute(update(table).where(column == guest.id).values(user_id=actor.user_id))
            s.delete(guest)
            return moved

    # ---- API keys -----------------------------------------------------------------------------
    def create_key(self, actor: Actor, name: str = "key") -> NewKey:
        if actor.is_guest:
            raise PermissionDeniedError("Guests cannot create API keys: sign in first.")
        name = name.strip()[:100] or "key"
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with transaction(self.sessions) as s:
            row = ApiKey(user_id=actor.user_id, name=name, prefix=key[:12], key_hash=key_hash(key))
            s.add(row)
            s.flush()
            return NewKey(id=row.id, name=name, prefix=row.prefix, key=key)

    def list_keys(self, actor: Actor) -> list[dict[str, Any]]:
        with transaction(self.sessions) as s:
            rows = s.scalars(select(ApiKey).where(ApiKey.user_id == actor.user_id).order_by(ApiKey.id))
            return [{"id": k.id, "name": k.name, "prefix": k.prefix, "created_at": k.created_at,
                     "last_used_at": k.last_used_at, "revoked": k.revoked_at is not None} for k in rows]

    def revoke_key(self, actor: Actor, key_id: int) -> None:
        with transaction(self.sessions) as s:
            row = s.get(ApiKey, key_id)
            if row is None or (row.user_id != actor.user_id and not actor.is_admin):
                raise NotFoundError(f"No API key {key_id} of yours.")
            row.revoked_at = row.revoked_at or utcnow()

    def key_actor(self, key: str) -> Actor | None:
        """The user a ``/v1`` key acts as, or None for an unknown or revoked key."""
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        with transaction(self.sessions) as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash(key), ApiKey.revoked_at.is_(None)))
            if row is None:
                return None
            user = s.get(User, row.user_id)
            if user is None:
                return None
            now = utcnow()
            if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
                row.last_used_at = now  # at most one write a minute per key
            return Actor.of(user)

    # ---- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _admin(actor: Actor) -> None:
        require_admin(actor)

    @staticmethod
    def _user(s: Session, name: str) -> User:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            raise NotFoundError(f"No user named {name!r}.")
        return user

    @staticmethod
    def _admins(s: Session) -> int:
        return int(s.scalar(select(func.count()).select_from(User).where(User.is_admin.is_(True))) or 0)
