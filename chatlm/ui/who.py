"""Who a UI event acts as: every handler asks here, with the event's ``gr.Request``.

Gradio hands each event the request that carried it (the page's cookies and headers, also for
events that wait in its queue), so the actor is decided from the session or guest cookie on the
server for each call; no handler takes a user id from its inputs.
"""

from __future__ import annotations

from typing import Any

from chatlm.errors import PermissionDeniedError
from chatlm.identity.accounts import Actor
from chatlm.identity.requests import Identity

SIGNED_OUT = ("You are not signed in (or your session ended): reload the page and sign in. A script "
              "sends its API key (Authorization: Bearer ...) or the session cookie.")


class Who:
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
        if not actor.is_admin:
            raise PermissionDeniedError("Only an admin may do that.")
        return actor
