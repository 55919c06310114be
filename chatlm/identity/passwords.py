"""Hashing what proves who one is, apart from the accounts that store it: passwords with argon2id
(``argon2-cffi``, a maintained binding of the reference implementation, with its recommended
parameters); API keys and guest tokens are long random tokens, so a sha256 of them is enough to store
and lets one be found by its hash."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from chatlm.errors import InputError

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
"""argon2 hashes any length, but a megabyte password is only a way to spend the server's time."""


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


def rehashed(stored: str, password: str) -> str | None:
    """A new hash of a verified ``password`` when ``stored`` was made with older parameters, else None."""
    hasher = _hasher()
    return str(hasher.hash(password)) if hasher.check_needs_rehash(stored) else None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def name_key(name: str) -> str:
    """The key of a typed name's wrong-password record (names differing in case share one)."""
    return key_hash(name.lower())


def verifies(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches the stored hash; with no hash, the same work against a dummy
    one and False, so timing does not tell an unknown name (or one without a password) apart."""
    from argon2.exceptions import InvalidHashError, VerificationError

    hasher = _hasher()
    try:
        return bool(hasher.verify(stored or _DUMMY.get(hasher), password)) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


class _Dummy:
    """A hash to verify against when the name is unknown (made once, on first use)."""

    def __init__(self) -> None:
        self.value: str | None = None

    def get(self, hasher: Any) -> str:
        if self.value is None:
            self.value = str(hasher.hash(secrets.token_urlsafe(16)))
        return self.value


_DUMMY = _Dummy()
