"""Which adapter answers: the adapters this process serves, the default one, the reader, and
following the registry's promotions and rollbacks without a restart.

Split from the chat turns (``chatlm.chat.turns``): a turn asks ``choose`` which adapter a model choice
means, and nothing else here. The Training tab promotes and rolls back through it
(``chatlm.training.manage``), the OpenAI-compatible API loads adapters through it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from chatlm.adapters.scope import Embed, Scope, near, nearest, rows
from chatlm.config import Settings
from chatlm.engine.backend import Backend
from chatlm.errors import ChatLMError, InputError, NotFoundError
from chatlm.store import registry
from chatlm.store.db import transaction

log = logging.getLogger(__name__)
DEFAULT_MODEL = ""
"""A conversation's model choice meaning "whatever the server serves by default" (the active adapter)."""
BASE_MODEL = "base"
"""A conversation's model choice meaning "the base model, no adapter"."""


class Serving:
    """The adapters of one backend, and which of them new answers use."""

    def __init__(self, settings: Settings, backend: Backend | None, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.backend = backend
        self.sessions = sessions
        self.active: str | None = None
        """Adapter used by new answers unless one is named; None is the base model."""
        self.reader: str | None = None
        """The reader adapter that answers questions about a loaded text when the base model serves
        (``ensure_reader``); None: the base model reads too."""
        self._readers: dict[str, bool] = {}
        self._registry_seen: tuple[str, Any] | bool | None = False
        """The registry's active adapter (name, activation time) when last followed; False: never."""
        self._scopes: dict[str, Scope] = {}
        """Loaded adapters served only to what they were taught (``chatlm.adapters.scope``)."""
        self._taught: dict[str, Any] = {}
        """Their taught questions' embeddings (unit rows), computed at the first question routed."""
        self._asked: tuple[str, Any] | None = None
        """The last question embedded here and its vector: a question for a corrections round is
        routed, then read from its taught passages, and is embedded once for both."""

    def choose(self, choice: str | None) -> str | None:
        """The adapter an answer uses for a model choice: the default (the active adapter), the
        base model (None), or a served adapter by name (one not served is refused)."""
        if not choice:
            return self.follow_registry()
        if choice == BASE_MODEL:
            return None
        if choice not in self.names():
            raise NotFoundError(f"The model {choice!r} is not served here (any more): choose another "
                                "one at the top of the chat.")
        return choice

    def names(self) -> list[str]:
        """LoRA adapters the backend can serve, as model ids."""
        return list(self.backend.adapter_names()) if self.backend is not None else []

    def load(self, name: str, path: str, *, activate: bool = False) -> float:
        """Load an adapter directory while serving (no restart); optionally make it the default.
        The previous default stays loaded, so rolling back is just activating it again."""
        if self.backend is None:
            raise InputError("This backend cannot load adapters.")
        seconds = float(self.backend.load_adapter(name, Path(path)))
        scope = Scope.read(Path(path))
        if scope is not None:
            self._scopes[name] = scope
        else:
            self._scopes.pop(name, None)
        self._taught.pop(name, None)
        if activate:
            self.activate(name)
        return seconds

    def unload(self, name: str) -> bool:
        """Free a loaded adapter (the base model serves if it was the default); whether it was loaded."""
        if self.backend is None or not self.backend.unload_adapter(name):
            return False
        self._scopes.pop(name, None)
        self._taught.pop(name, None)
        if self.active == name:
            self.active = None
        return True

    def route(self, adapter: str | None, question: str, embed: Embed, *, reading: bool) -> str | None:
        """The adapter that answers ``question`` when ``adapter`` is asked for. An adapter with a
        scope (a corrections round) answers the questions close to the ones it was taught; any other
        goes to the adapter it continued from, and on down. A fall back that reaches the reader for
        a question not about a text (``reading``) goes to the base model: the reader answers
        questions about texts only."""
        vector = None
        seen: set[str] = set()
        fell_back = False
        while adapter is not None and adapter in self._scopes and adapter not in seen:
            seen.add(adapter)
            if vector is None:
                vector = self._vector(question, embed)
            if adapter not in self._taught:
                self._taught[adapter] = rows(embed, self._scopes[adapter].questions)
            if near(vector, self._taught[adapter]):
                return adapter
            adapter, fell_back = self._scopes[adapter].falls_back_to, True
            try:
                self.ensure_loaded(adapter)
            except ChatLMError as exc:  # the parent is gone: the base model answers
                log.warning("%s falls back to the base model: %s", adapter, exc.message)
                return None
        if fell_back and adapter is not None and not reading and (adapter == self.reader or self.reads(adapter)):
            return None
        return adapter

    def activate(self, name: str | None) -> None:
        if name is not None and name not in self.names():
            raise NotFoundError(f"No adapter named {name!r} is loaded.")
        self.active = name

    def sync(self) -> str | None:
        """Serve the registry's active adapter (loading it first if needed): this is how a server
        learns of an activation or rollback made elsewhere (the CLI, another worker), no restart."""
        with transaction(self.sessions) as s:
            active = registry.active_adapter(s)
            name, path = (active.name, active.path) if active else (None, None)
        if name is not None:
            self._load_once(name, str(path))
        before = self.active
        self.activate(name)
        if before not in (None, name) and self.backend is not None and self.backend.unload_on_switch:
            self.backend.unload_adapter(before)  # a remote engine's few adapter slots: free the old one
        return name

    def _load_once(self, name: str, path: str) -> None:
        if name not in self.names():
            self.load(name, path)

    def ensure_loaded(self, name: str | None) -> None:
        """Load a registered adapter that this process does not serve yet (Compare asks for any)."""
        if name is None or name in self.names():
            return
        with transaction(self.sessions) as s:
            path = registry.get_adapter(s, name=name).path
        self._load_once(name, path)

    def promote(self, name: str | None) -> str | None:
        """Make a registered adapter (None: the base model) the default, in the registry and here;
        it is loaded first, so one that fails to load leaves the registry as it was."""
        self.ensure_loaded(name)
        with transaction(self.sessions) as s:
            registry.activate(s, name=name)
        self.activate(name)
        self._registry_seen = self._registry_state()
        return name

    def rollback(self) -> str | None:
        """Activate the adapter that was active before the current one; returns the one now active.
        Like a promotion, it loads first: one that fails to load leaves registry and server as they were."""
        with transaction(self.sessions) as s:
            target = registry.rollback_target(s)
            name = target.name if target is not None else None
        return self.promote(name)

    def _registry_state(self) -> tuple[str, Any] | None:
        with transaction(self.sessions) as s:
            active = registry.active_adapter(s)
            return (active.name, active.activated_at) if active else None

    def taught_passages(self, adapter: str | None, question: str, embed: Embed) -> tuple[str, ...]:
        """The passages ``adapter`` was taught ``question`` (or one worded almost the same) on;
        none for an adapter without a scope, a chat question, or a question it was not taught."""
        scope = self._scopes.get(adapter) if adapter is not None else None
        if scope is None or not scope.passages:
            return ()
        if adapter not in self._taught:
            self._taught[adapter] = rows(embed, scope.questions)
        index = nearest(self._vector(question, embed), self._taught[adapter])
        return () if index is None else scope.passages_of(index)

    def _vector(self, question: str, embed: Embed) -> Any:
        asked = self._asked  # one read: another request's thread may replace it meanwhile
        if asked is not None and asked[0] == question:
            return asked[1]
        vector = rows(embed, [question])[0]
        self._asked = (question, vector)
        return vector

    def taught(self, adapter: str | None) -> bool:
        """Whether ``adapter`` answers only what it was taught (a corrections round): a question
        ``route`` sends it is one a user corrected or liked, worded almost the same."""
        return adapter is not None and adapter in self._scopes

    def reads(self, adapter: str | None) -> bool:
        """Whether ``adapter`` was taught to read (a reader round, or a round continued from one):
        its span and its decline are its own, so it copies from every sentence and may decline."""
        if adapter is None:
            return False
        if adapter not in self._readers:
            with transaction(self.sessions) as s:
                self._readers[adapter] = registry.is_reader(s, adapter)
        return self._readers[adapter]

    def mark_reader(self, adapter: str, reads: bool) -> None:
        """Say whether an adapter loaded from another registry (the QA harness's) is a reader."""
        self._readers[adapter] = reads

    def ensure_reader(self) -> str | None:
        """Serve the reader adapter for questions about a loaded text. ``CHATLM_READER=auto``: the
        one shipped in ``chatlm/adapters/reader`` when the bundled model serves (registered on the
        first start, so it is listed with every adapter); a name: that registered adapter; ``off``:
        none. A missing or broken reader leaves the base model reading (logged)."""
        from chatlm.adapters import reader_for

        if self.backend is None or not self.backend.supports_copy:
            return None
        try:
            with transaction(self.sessions) as s:
                found = reader_for(self.settings, s, register_as=self.backend.model_id)
            if found is None:
                if self.settings.reader not in ("auto", "off"):
                    raise NotFoundError(f"CHATLM_READER names {self.settings.reader!r}, which is not a "
                                        "registered adapter.")
                return None
            name, path = found
            self._load_once(name, path)
        except Exception as exc:
            message = exc.message if isinstance(exc, ChatLMError) else repr(exc)
            log.warning("no reader adapter, the base model reads: %s", message)
            return None
        self.reader = name
        self._readers[name] = True
        return name

    def follow_registry(self) -> str | None:
        """The adapter new answers use. When the registry's choice changed since it was last
        followed (``chatlm adapters activate`` in a shell, a rollback elsewhere), serve the new
        choice first: one small query per new answer buys "no restart" without a watcher thread.
        An adapter loaded through the API stays the default until the registry changes."""
        state = self._registry_state()
        if state != self._registry_seen:
            self._registry_seen = state
            self.restore()
        return self.active

    def restore(self) -> str | None:
        """At start: serve the adapter the registry says is active. A missing or broken adapter must
        not stop the server, so the base model serves instead and the reason is logged."""
        try:
            return self.sync()
        except Exception as exc:  # a broken adapter, a remote backend: the base model serves
            message = exc.message if isinstance(exc, ChatLMError) else repr(exc)
            log.warning("serving the base model: %s", message)
            self.active = None
            return None
