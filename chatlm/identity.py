"""The identity step: a request (session cookie, guest cookie or API key) becomes an ``Actor``.

Every UI handler, Gradio API endpoint and ``/v1`` route asks this one place who is calling; nothing
trusts a user id, a name or a role that the client sends. Sessions live in a cookie signed with
itsdangerous (HttpOnly, SameSite=Lax, with an expiry); the signed value carries the user id and a
fingerprint of the password hash, so changing a password signs out every other browser.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select

from chatlm.accounts import AccountService, Actor
from chatlm.config import Settings
from chatlm.store.db import transaction
from chatlm.store.models import User
from chatlm.store.repo import LOCAL_USER, get_or_create_user

log = logging.getLogger(__name__)
SESSION_COOKIE = "chatlm_session"
GUEST_COOKIE = "chatlm_guest"
GUEST_COOKIE_DAYS = 365


class Identity:
    """Decides who a request is. ``local`` mode (``CHATLM_AUTH=none``): everyone is the local admin."""

    def __init__(self, settings: Settings, accounts: AccountService) -> None:
        self.settings = settings
        self.accounts = accounts
        self._serializer: Any = None
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
            token = cookies.get(GUEST_COOKIE, "")
            if token:
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
        return str(self._signer().dumps({"u": actor.user_id, "p": self._fingerprint(actor.user_id)}))

    def session_actor(self, value: str) -> Actor | None:
        from itsdangerous import BadSignature

        if not value or len(value) > 500:
            return None
        try:
            data = self._signer().loads(value, max_age=self.settings.session_hours * 3600)
        except BadSignature:  # forged, altered or expired: not signed in
            return None
        if not isinstance(data, dict) or not isinstance(data.get("u"), int):
            return None
        with transaction(self.accounts.sessions) as s:
            user = s.get(User, data["u"])
            if user is None or user.is_guest or self._fingerprint_of(user) != data.get("p"):
                return None
            return Actor.of(user)

    def cookie_options(self, *, max_age: float) -> dict[str, Any]:
        """HttpOnly (no script reads it), SameSite=Lax (not sent by other sites' forms). On a Space
        (always HTTPS) Secure and SameSite=None: the app runs in an iframe of huggingface.co, where a
        Lax cookie of the *.hf.space site is never sent (Gradio's own OAuth cookie does the same)."""
        space = bool(os.environ.get("SPACE_ID"))
        return {"max_age": int(max_age), "httponly": True, "samesite": "none" if space else "lax",
                "path": "/", "secure": space}

    def _fingerprint(self, user_id: int) -> str:
        with transaction(self.accounts.sessions) as s:
            user = s.scalar(select(User).where(User.id == user_id))
            return self._fingerprint_of(user) if user is not None else ""

    @staticmethod
    def _fingerprint_of(user: User) -> str:
        return hashlib.sha256((user.password_hash or f"no password {user.id}").encode()).hexdigest()[:16]

    def _signer(self) -> Any:
        if self._serializer is None:
            from itsdangerous import URLSafeTimedSerializer

            self._serializer = URLSafeTimedSerializer(self._secret(), salt="chatlm-session")
        return self._serializer

    def _secret(self) -> str:
        """CHATLM_SECRET_KEY, or a random key made once and kept beside the database (mode 0600)."""
        if self.settings.secret_key:
            return self.settings.secret_key
        path = Path(self.settings.data_dir) / "secret_key"
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(key)
        log.info("made a session signing key in %s", path)
        return key
