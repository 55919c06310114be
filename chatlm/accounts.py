"""Accounts: who a user is, how they prove it, and what they may do.

The one place that creates users, checks passwords and API keys, and decides roles. Passwords are
hashed with argon2id (``argon2-cffi``: a maintained binding of the reference implementation, with
its recommended parameters); API keys are long random tokens, so a sha256 of them is enough to
store and lets a key be found by its hash. Wrong passwords in a row slow the next attempt down and
then lock the account for a while, so a guesser gets few tries per hour.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chatlm.errors import ChatLMError, InputError, NotFoundError, PermissionDeniedError
from chatlm.store.db import transaction
from chatlm.store.models import ApiKey, Base, Conversation, ConversationDocument, Document, User, utcnow
from chatlm.store.repo import LOCAL_USER

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
"""argon2 hashes any length, but a megabyte password is only a way to spend the server's time."""
SLOW_AFTER = 3
"""Wrong passwords in a row after which each further attempt waits (``SLOW_S`` × the excess)."""
SLOW_S = 1.0
LOCK_AFTER = 10
LOCK_FOR = timedelta(minutes=15)
KEY_PREFIX = "clm_"
GUEST_PREFIX = "guest-"
GUEST_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")


def new_guest_token() -> str:
    return secrets.token_urlsafe(32)


class SignInError(ChatLMError):
    """Wrong name or password, or a locked account; the message never says which name exists."""

    status_code = 401
    code = "invalid_credentials"


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


def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    check_password(password)
    return str(_hasher().hash(password))


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InputError(f"A password needs at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise InputError(f"A password has at most {MAX_PASSWORD} characters.")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AccountService:
    """Users, passwords, roles and API keys. Calls that change someone else need an admin actor."""

    def __init__(self, sessions: sessionmaker[Session], *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.sessions = sessions
        self.sleep = sleep
        """Waits before answering a slowed-down sign-in (a test passes a recorder)."""

    # ---- reading ------------------------------------------------------------------------------
    def list_users(self, actor: Actor) -> list[UserInfo]:
        self._admin(actor)
        with transaction(self.sessions) as s:
            counts = dict(s.execute(select(Conversation.user_id, func.count())
                                    .where(Conversation.deleted_at.is_(None))
                                    .group_by(Conversation.user_id)).tuples().all())
            now = utcnow()
            return [UserInfo(name=u.name, is_admin=u.is_admin, is_guest=u.is_guest,
                             has_password=u.password_hash is not None,
                             locked=bool(u.locked_until and u.locked_until > now),
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
            exists = s.scalar(select(User.id).where(User.name == name, User.is_guest.is_(False))) is not None
        if not exists:
            return self.add_user(None, name, password, admin=True)
        self.set_password(None, name, password)
        self.set_role(None, name, "admin")
        return self.actor(name)

    def set_password(self, actor: Actor | None, name: str, password: str) -> None:
        """Change a password (one's own, or anyone's for an admin); it also lifts a lockout."""
        hashed = hash_password(password)
        with transaction(self.sessions) as s:
            user = self._user(s, name)
            if actor is not None and actor.user_id != user.id:
                self._admin(actor)
            user.password_hash, user.failed_logins, user.locked_until = hashed, 0, None

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
        whether the name exists. Wrong attempts in a row are slowed down, then locked out."""
        from argon2.exceptions import InvalidHashError, VerificationError

        if len(password) > MAX_PASSWORD:
            raise SignInError("Wrong user name or password.")
        with transaction(self.sessions) as s:
            user = s.scalar(select(User).where(User.name == name, User.is_guest.is_(False)))
            now = utcnow()
            if user is not None and user.locked_until is not None and user.locked_until > now:
                minutes = max(1, round((user.locked_until - now).total_seconds() / 60))
                raise SignInError(f"Too many wrong passwords: this account is locked for {minutes} more "
                                  "minute(s). An admin can lift it by setting a new password.")
            failures = user.failed_logins if user is not None else 0
        if failures >= SLOW_AFTER:
            self.sleep(SLOW_S * (failures - SLOW_AFTER + 1))
        hasher = _hasher()
        ok = False
        if user is not None and user.password_hash:
            try:
                ok = bool(hasher.verify(user.password_hash, password))
            except (VerificationError, InvalidHashError):
                ok = False
        else:  # the same work for an unknown name, so timing does not tell names apart
            with contextlib.suppress(VerificationError, InvalidHashError):
                hasher.verify(_DUMMY.get(hasher), password)
        if user is None:
            raise SignInError("Wrong user name or password.")
        with transaction(self.sessions) as s:  # the failure is committed before it is said
            row = s.get(User, user.id)
            if row is not None and not ok:
                row.failed_logins += 1
                if row.failed_logins >= LOCK_AFTER:
                    row.locked_until, row.failed_logins = utcnow() + LOCK_FOR, 0
            elif row is not None:
                row.failed_logins, row.locked_until = 0, None
                if hasher.check_needs_rehash(row.password_hash):
                    row.password_hash = hasher.hash(password)
            actor = Actor.of(row) if row is not None and ok else None
        if actor is None:
            raise SignInError("Wrong user name or password.")
        return actor

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
        """The guest identity bound to a browser's random token (a new token when None or not one
        of ours in shape): returns the actor and the token to keep in the visitor's cookie. The
        token is the only secret, so whoever holds it is that guest; the row is made on first use."""
        if not token or not GUEST_TOKEN.fullmatch(token):
            token = new_guest_token()
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
        texts become the user's, and the guest identity is gone. Returns the conversations moved."""
        if not token or not GUEST_TOKEN.fullmatch(token) or actor.is_guest:
            return 0
        name = GUEST_PREFIX + key_hash(token)[:32]
        with transaction(self.sessions) as s:
            guest = s.scalar(select(User).where(User.name == name, User.is_guest.is_(True)))
            if guest is None:
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


class _Dummy:
    """A hash to verify against when the name is unknown (made once, on first use)."""

    def __init__(self) -> None:
        self.value: str | None = None

    def get(self, hasher: Any) -> str:
        if self.value is None:
            self.value = str(hasher.hash(secrets.token_urlsafe(16)))
        return self.value


_DUMMY = _Dummy()
