"""What the access tests share: signing in over HTTP, a Gradio client per caller (a cookie or an API
key), guests as the server issues them, and what the database holds.

Each caller has its own cookie jar: ann (the first account, admin), bob (a user), a guest, and an
anonymous caller with no cookie at all. The ids tried are other users' on purpose, and a refused
call must leave the database as it was.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from chatlm.identity.requests import GUEST_COOKIE, SESSION_COOKIE
from chatlm.store import db


def sign_in(server, name: str, password: str) -> httpx.Response:
    return httpx.post(f"{server.url}/login", data={"name": name, "password": password},
                      follow_redirects=False, timeout=30)


def client_as(server, cookie: str | None = None, key: str | None = None) -> Any:
    import gradio_client

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
