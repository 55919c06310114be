"""Training rounds, the adapter registry and promotion, as a service for admins.

The one place the rule "only an admin trains, promotes, rolls back or compares" lives: every method
takes the acting user and refuses anyone else before reading or changing anything. The Training tab
and any other front end call this rather than the store.
"""

from __future__ import annotations

from chatlm.chat.turns import ChatService
from chatlm.engine.generation import Generation
from chatlm.engine.params import SamplingParams
from chatlm.evaluation.verdict import Verdict, judge
from chatlm.identity.accounts import Actor, require_admin
from chatlm.store import registry
from chatlm.store.db import transaction
from chatlm.store.models import AdapterVersion, TrainingRun
from chatlm.training import data, rounds
from chatlm.training.options import RoundOptions


class TrainingService:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat
        self.sessions = chat.sessions

    def runs(self, actor: Actor, *, limit: int = 10) -> list[TrainingRun]:
        """The recent rounds, newest first."""
        require_admin(actor)
        with transaction(self.sessions) as s:
            return registry.latest_runs(s, limit=limit)

    def adapters(self, actor: Actor) -> list[AdapterVersion]:
        require_admin(actor)
        with transaction(self.sessions) as s:
            return registry.list_adapters(s)

    def plan(self, actor: Actor) -> data.RoundData:
        """What ``auto`` would train now (raises NotEnoughDataError saying what is missing)."""
        require_admin(actor)
        with transaction(self.sessions) as s:
            return data.build_round(s, "auto")

    def serving(self, actor: Actor) -> str | None:
        """The adapter new chats use (following a change made elsewhere first)."""
        require_admin(actor)
        return self.chat.adapters.follow_registry()

    def start(self, actor: Actor, options: RoundOptions) -> int:
        require_admin(actor)
        return rounds.start_round(self.chat.settings, options, sessions=self.sessions)

    def worse(self, actor: Actor, name: str | None) -> Verdict | None:
        """The verdict on ``name`` when it is worse than its baseline (Promote asks first), else None."""
        require_admin(actor)
        if name is None:
            return None
        with transaction(self.sessions) as s:
            judged = judge(registry.get_adapter(s, name=name).metrics)
        return judged if judged.is_worse else None

    def promote(self, actor: Actor, name: str | None) -> str | None:
        require_admin(actor)
        return self.chat.adapters.promote(name)

    def rollback(self, actor: Actor) -> str | None:
        require_admin(actor)
        return self.chat.adapters.rollback()

    def compare(self, actor: Actor, messages: list[dict[str, str]], names: tuple[str | None, ...],
                params: SamplingParams) -> list[Generation]:
        """One generation per model, started together (so they share batches); nothing is stored."""
        require_admin(actor)
        gens: list[Generation] = []
        try:
            for name in names:
                self.chat.adapters.ensure_loaded(name)  # a registered adapter not served yet
                gens.append(self.chat.generate(messages, params, name))
        except BaseException:
            for g in gens:
                g.cancel()
            raise
        return gens
