"""Feedback figures and dataset exports, scoped by who asks.

The one place the rule "a user sees and exports their own ratings; an admin, everyone's" lives:
the Feedback tab and any other front end call this with the acting user rather than the store.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from chatlm.feedback import load, records, stats
from chatlm.identity.accounts import Actor
from chatlm.store.db import transaction


class FeedbackService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def rows(self, actor: Actor, *, label: str | None = None, adapter: str | None = None,
             text: str | None = None) -> tuple[list[stats.RatedRow], list[stats.RatedRow]]:
        """(every rating the actor may see, those matching the filters), newest first."""
        only = None if actor.is_admin else actor.user_id
        with transaction(self.sessions) as s:
            return (stats.rated_rows(s, user_id=only),
                    stats.rated_rows(s, label=label, adapter=adapter, text=text, user_id=only))

    def contribution(self, actor: Actor) -> records.Contribution:
        """What the ratings the actor may export give training (the same as their datasets)."""
        only = None if actor.is_admin else actor.name
        with transaction(self.sessions) as s:
            return records.contribution(load.rated_answers(s, user=only))

    def dataset(self, actor: Actor, fmt: str) -> tuple[list[dict[str, Any]], records.ExportCounts]:
        """Training records in ``fmt`` from the ratings the actor may export."""
        only = None if actor.is_admin else actor.name
        with transaction(self.sessions) as s:
            answers = load.rated_answers(s, user=only)
            convs = load.conversations(s, user=only) if fmt == "messages" else []
        return records.build(fmt, answers, convs)
