"""The identity step: a request (session cookie, guest cookie or API key) becomes an ``Actor``.

Every UI handler, Gradio API endpoint and ``/v1`` route asks this one place who is calling (UI
events and the chats export through ``Who``); nothing trusts a user id, a name or a role that the
client sends. Sessions live in a cookie signed with itsdangerous (HttpOnly, SameSite=Lax, with an
expiry); the signed value carries the user id, a fingerprint of that account (so a later account
given the same id is not it) and the account's session generation, which signing out, a new password
or an admin bumps: a saved cookie is refused from then on. Guest tokens are issued here too, signed
with the same key: a token the client makes up is no guest (and makes no user row).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from chatlm.config import Settings
from chatlm.errors import PermissionDeniedError
from chatlm.identity.accounts import GUEST_DAYS, AccountService, Actor, new_guest_token, require_admin
from chatlm.store.db import transaction
from chatlm.store.models import ServerSecret, User
from chatlm.store.repo import LOCAL_USER, get_or_create_user

log = logging.getLogger(__name__)
SIGNED_OUT = ("You are not signed in (or your session ended): reload the page and sign in. A script "
              "sends its API key (Authorization: Bearer ...) or the session cookie.")
SESSION_KEY = "session_signing_key"
"""The ``server_secrets`` row of the key that signs session and guest cookies."""
SESSION_COOKIE = "chatlm_session"
GUEST_COOKIE = "chatlm_guest"
GUEST_COOKIE_DAYS = GUEST_DAYS
KEEP_MINUTES = 60
"""How long a sign-in page's proof of this browser's guest stays good (the form's hidden field)."""


class Identity:
    """Decides who a request is. ``local`` mode (``CHATLM_AUTH=none``): everyone is the local admin."""

    def __init__(self, settings: Settings, accounts: AccountService) -> None:
        self.settings = settings
        self.accounts = accounts
        self._serializers: dict[str, Any] = {}
        self._local: Actor | None = None

    # ---- who is calling ----------------------------------------------------------------------
    def actor(self, cookies: Mapping[str, str], authorization: str = "") -> Actor | None:
        """The actor of a UI request, or None: not signed in (and no guest identity allowed)."""
        if self.settings.auth == "none":
            return self.local()
        signed = self.session_actor(cookies.get(SESSION_COOKIE, ""))
        if signed is not None:
            return signed
        if authorization:
            keyed = self.api_actor(authorization)
            if keyed is not None:
                return keyed
        if self.settings.guests_allowed:
            token = self.guest_token(cookies.get(GUEST_COOKIE, ""))
            if token is not None:
                return self.accounts.guest(token)[0]
        return None

    def api_actor(self, authorization: str) -> Actor | None:
        """The actor of a ``/v1`` call: a user's key, or a key of ``CHATLM_API_KEYS`` (the local
        user, as before accounts existed). With no keys configured and no accounts, the local user."""
        key = authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else ""
        if key and key in self.settings.api_keys:
            return self.local()
        keyed = self.accounts.key_actor(key) if key else None
        if keyed is not None:
            return keyed
        if self.settings.auth == "none" and not self.settings.api_keys:
            return self.local()  # an open local API, as before accounts: any key or none
        return None

    def local(self) -> Actor:
        if self._local is None:
            with transaction(self.accounts.sessions) as s:
                user = get_or_create_user(s, name=LOCAL_USER)
                user.is_admin = True
                self._local = Actor(user_id=user.id, name=user.name, is_admin=True)
        return self._local

    # ---- sessions ----------------------------------------------------------------------------
    def session_value(self, actor: Actor) -> str:
        with transaction(self.accounts.sessions) as s:
            user = s.get(User, actor.user_id)
            data = {"u": actor.user_id, "p": self._fingerprint_of(user) if user else "",
                    "g": user.session_generation if user else -1}
        return str(self._signer("chatlm-session").dumps(data))

    def session_actor(self, value: str) -> Actor | None:
        """The signed-in user of a session cookie, or None: forged, expired, of an account that is
        gone, or ended (signed out, a new password, an admin's sign-out)."""
        data = self._loads("chatlm-session", value, self.settings.session_hours * 3600)
        if not isinstance(data, dict) or not isinstance(data.get("u"), int):
            return None
        with transaction(self.accounts.sessions) as s:
            user = s.get(User, data["u"])
            if (user is None or user.is_guest or self._fingerprint_of(user) != data.get("p")
                    or user.session_generation != data.get("g")):
                return None
            return Actor.of(user)

    # ---- guests ------------------------------------------------------------------------------
    def new_guest_cookie(self) -> str:
        """A guest token issued by this server, signed: the only guest cookies honoured."""
        return str(self._signer("chatlm-guest").dumps(new_guest_token()))

    def guest_token(self, cookie: str) -> str | None:
        """The token inside a guest cookie this server issued (within ``GUEST_COOKIE_DAYS``);
        None for one made up, altered or expired."""
        token = self._loads("chatlm-guest", cookie, GUEST_COOKIE_DAYS * 86400)
        return token if isinstance(token, str) else None

    def keep_proof(self, cookie: str) -> str:
        """The sign-in page's hidden field: proof that this browser held this guest cookie when the
        page was shown, so that signing in keeps that guest's work and no cookie planted later."""
        return str(self._signer("chatlm-keep").dumps(self._cookie_hash(cookie))) if cookie else ""

    def keeps(self, proof: str, cookie: str) -> bool:
        """Whether a sign-in form's proof names this guest cookie, signed here within
        ``KEEP_MINUTES``, and the cookie is a guest token this server issued."""
        return (bool(cookie) and self.guest_token(cookie) is not None
                and self._loads("chatlm-keep", proof, KEEP_MINUTES * 60) == self._cookie_hash(cookie))

    @staticmethod
    def _cookie_hash(cookie: str) -> str:
        return hashlib.sha256(cookie.encode()).hexdigest()[:32]

    def cookie_options(self, *, max_age: float) -> dict[str, Any]:
        """HttpOnly (no script reads it), SameSite=Lax (not sent by other sites' forms). On a Space
        (always HTTPS) Secure and SameSite=None: the app runs in an iframe of huggingface.co, where a
        Lax cookie of the *.hf.space site is never sent (Gradio's own OAuth cookie does the same)."""
        space = bool(os.environ.get("SPACE_ID"))
        return {"max_age": int(max_age), "httponly": True, "samesite": "none" if space else "lax",
                "path": "/", "secure": space}

    @staticmethod
    def _fingerprint_of(user: User) -> str:
        """This account and no later one: SQLite may give a removed account's id to the next."""
        made = user.created_at.isoformat() if user.created_at else ""
        return hashlib.sha256(f"{user.id} {user.name} {made}".encode()).hexdigest()[:16]

    def _signer(self, salt: str) -> Any:
        """One key, a salt per use: a value signed for one use is refused by the others."""
        if salt not in self._serializers:
            from itsdangerous import URLSafeTimedSerializer

            self._serializers[salt] = URLSafeTimedSerializer(self._secret(), salt=salt)
        return self._serializers[salt]

    def _loads(self, salt: str, value: str, max_age: float) -> Any:
        """What a value signed here for ``salt`` says, or None: forged, altered or expired."""
        from itsdangerous import BadSignature

        if not value or len(value) > 500:
            return None
        try:
            return self._signer(salt).loads(value, max_age=max_age)
        except BadSignature:
            return None

    def _secret(self) -> str:
        """CHATLM_SECRET_KEY (read once at start), or a random key made once and kept in the
        database: no file under the data folder or the working directory holds it, so no path a
        request names can reach it. A key an older version kept in ``<data dir>/secret_key`` moves
        into the database (sessions stay valid) and the file is removed."""
        if self.settings.secret_key:
            return self.settings.secret_key
        legacy = Path(self.settings.data_dir) / "secret_key"
        old = legacy.read_text(encoding="utf-8").strip() if legacy.is_file() else ""

        def key_row(s: Any) -> str:
            row = s.get(ServerSecret, SESSION_KEY)
            if row is None:
                row = ServerSecret(name=SESSION_KEY, value=old or secrets.token_urlsafe(48))
                s.add(row)
                s.flush()
            return str(row.value)

        try:
            with transaction(self.accounts.sessions) as s:
                key = key_row(s)
        except IntegrityError:  # another front end made it first: take theirs
            with transaction(self.accounts.sessions) as s:
                key = key_row(s)
        if old:
            legacy.unlink(missing_ok=True)
            log.info("moved the session signing key from %s into the database", legacy)
        return key


class Who:
    """Who a UI event or an HTTP route acts as, from the request that carried it: Gradio hands each
    event its request (the page's cookies and headers, also for events that wait in its queue), and
    Starlette each route, so the actor is decided on the server for each call; no handler takes a user
    id from its inputs."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def actor(self, request: Any) -> Actor:
        """The acting user; refuses a call with no identity. Without a request (a handler called
        in-process, not through Gradio) only the local mode has an answer: the local user."""
        if request is None:
            if self.identity.settings.auth == "none":
                return self.identity.local()
            raise PermissionDeniedError(SIGNED_OUT)
        cookies = getattr(request, "cookies", None) or {}
        headers = getattr(request, "headers", None) or {}
        actor = self.identity.actor(dict(cookies), headers.get("authorization", ""))
        if actor is None:
            raise PermissionDeniedError(SIGNED_OUT)
        return actor

    def admin(self, request: Any) -> Actor:
        """The acting user when an admin; anyone else is refused (the tab is hidden from them too,
        but hiding is not access control: the endpoint behind it checks here)."""
        actor = self.actor(request)
        require_admin(actor)
        return actor
