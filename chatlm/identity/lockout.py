"""Wrong passwords in a row for a typed name slow the next attempt down and then lock that name for a
while, so a guesser gets few tries per hour. Names with and without an account are counted alike (one
table), so neither the words nor the waits tell which names exist."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chatlm.errors import ChatLMError
from chatlm.identity.passwords import MAX_PASSWORD, name_key
from chatlm.store.db import transaction
from chatlm.store.models import SignInFailure, utcnow

SLOW_AFTER = 3
"""Wrong passwords in a row after which each further attempt waits (``SLOW_S`` × the excess)."""
SLOW_S = 1.0
LOCK_AFTER = 10
LOCK_FOR = timedelta(minutes=15)
"""How long a name stays locked; also how long wrong passwords are remembered without a new one."""
WRONG = "Wrong user name or password."
LOCKED = ("Too many wrong passwords: this name is locked for {minutes} more minute(s). An admin can lift "
          "it by setting a new password.")
"""Said for any name, with or without an account, after ``LOCK_AFTER`` wrong passwords."""


class SignInError(ChatLMError):
    """Wrong name or password, or a locked account; the message never says which name exists."""

    status_code = 401
    code = "invalid_credentials"


def count_attempt(sessions: sessionmaker[Session], name: str, password: str) -> float:
    """Count this attempt as wrong before checking it (the count is committed first, so attempts
    sent at once each see the ones before) and return the wait it earns; a locked name is refused
    here. The same steps whether or not an account has the name."""
    if len(password) > MAX_PASSWORD:
        raise SignInError(WRONG)
    try:
        return _count(sessions, name)
    except IntegrityError:  # a first attempt beside this one made the record: count on it
        return _count(sessions, name)


def _count(sessions: sessionmaker[Session], name: str) -> float:
    now = utcnow()
    with transaction(sessions) as s:
        record = s.get(SignInFailure, name_key(name))
        if record is not None and record.locked_until is not None and record.locked_until > now:
            raise SignInError(_locked(record.locked_until, now))
        if record is None:
            s.execute(delete(SignInFailure).where(  # forgotten records of any name go
                SignInFailure.last_failed_at < now - LOCK_FOR,
                (SignInFailure.locked_until.is_(None)) | (SignInFailure.locked_until < now)))
            record = SignInFailure(name_key=name_key(name), failures=0)
            s.add(record)
        elif record.last_failed_at < now - LOCK_FOR:
            record.failures = 0  # wrong passwords long ago are no longer "in a row"
        record.failures, record.last_failed_at, record.locked_until = record.failures + 1, now, None
        return SLOW_S * max(0, record.failures - SLOW_AFTER)


def settle(s: Session, name: str, *, signed_in: bool) -> None:
    """After the password was checked, in the transaction that says so: refuse a name locked by an
    attempt beside this one, then clear the name's record on success, or lock the name after
    ``LOCK_AFTER`` wrong passwords."""
    now = utcnow()
    record = s.get(SignInFailure, name_key(name))
    if record is not None and record.locked_until is not None and record.locked_until > now:
        raise SignInError(_locked(record.locked_until, now))
    if record is None:
        return
    if signed_in:
        s.delete(record)
    elif record.failures >= LOCK_AFTER:
        record.locked_until, record.failures = now + LOCK_FOR, 0


def lift(s: Session, name: str) -> None:
    """Forget the name's wrong passwords and any lock (a new password was set)."""
    s.execute(delete(SignInFailure).where(SignInFailure.name_key == name_key(name)))


def _locked(until: datetime, now: datetime) -> str:
    return LOCKED.format(minutes=max(1, round((until - now).total_seconds() / 60)))
