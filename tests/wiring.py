"""How tests get the app's parts: through the composition root, as the entry points do
(``chatlm.compose.build``), never by a part building another part for itself."""

from __future__ import annotations

from typing import Any

from chatlm import compose
from chatlm.chat.turns import ChatService
from chatlm.config import Settings
from chatlm.identity.requests import Who


def make_service(settings: Settings, backend: Any = None) -> ChatService:
    """The chat service of ``compose.build`` (loads the model unless given one)."""
    return compose.build(settings, backend).chat


def parts(service: ChatService) -> dict[str, Any]:
    """What a UI panel is given besides the chat service, wired over the same database and settings:
    ``who`` (the request's actor), ``training`` and ``feedback``."""
    from chatlm.feedback.reports import FeedbackService
    from chatlm.identity.accounts import AccountService
    from chatlm.identity.requests import Identity
    from chatlm.training.manage import TrainingService

    return {"who": Who(Identity(service.settings, AccountService(service.sessions))),
            "training": TrainingService(service), "feedback": FeedbackService(service.sessions)}
