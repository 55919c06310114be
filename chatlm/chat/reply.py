"""A streaming answer: what it yields as it is written, and how it is stored as it grows (a
checkpoint about every second) and when it ends (complete, stopped with its text, or failed), even
if whoever reads it goes away. ``chatlm.chat.turns.ChatService`` starts one per turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from chatlm.engine.backend import Backend
from chatlm.engine.generation import Generation
from chatlm.errors import ChatLMError
from chatlm.knowledge.answer import Support
from chatlm.store import repo
from chatlm.store.db import transaction

log = logging.getLogger(__name__)
STATUS_BY_FINISH = {"cancelled": "stopped", "error": "error"}
CHECKPOINT_S = 1.0
"""How often a streaming answer's text is written to the database (its row says ``pending``)."""


class Answering(Protocol):
    """What a reply needs of the service that started it (``ChatService``)."""

    sessions: sessionmaker[Session]
    backend: Backend

    def extractive_text(self, reply: Reply) -> str: ...

    def release(self, reply: Reply) -> None: ...


@dataclass
class Reply:
    """A streaming answer; iterating it yields text deltas, and the answer is stored at the end
    (complete, or stopped with its partial text) even if the reader goes away."""

    service: Answering
    generation: Generation
    conversation_id: int
    parent_id: int
    prompt_messages: list[dict[str, str]]
    dropped: int
    adapter: str | None
    sources: list[dict[str, Any]] | None = None
    """Knowledge passages the prompt quoted (numbered as cited), stored with the answer."""
    started: float = field(default_factory=time.perf_counter)
    message_id: int | None = None
    shown: str = ""
    """The text handed to the reader so far: what a checkpoint stores."""
    question: str = ""
    extract: list[Support] | None = None
    """For an extractive answer: the sentences of the passages it may copy from, best first."""
    final: str | None = None
    """The reply as stored and shown when it differs from the generated text (extractive answers:
    span, citation and quoted sentence, or the decline)."""
    short_answer: str | None = None
    """The copied span of an extractive answer ("" when declined)."""
    support_score: float | None = None
    prefix: str = ""
    """An answer being continued: the text it had, shown and stored before what is generated."""

    @property
    def notice(self) -> str:
        if not self.dropped:
            return ""
        return (f"The conversation is longer than the model's context window: the oldest "
                f"{self.dropped} message(s) were left out of this answer's prompt.")

    def __iter__(self) -> Iterator[str]:
        checkpointed = time.monotonic()
        try:
            if self.extract is not None:  # a short span, shown whole with its citation and sentence
                for _ in self.generation:
                    pass
                self.final = self.shown = self.service.extractive_text(self)
                yield self.final
                return
            if self.prefix:
                self.shown = self.prefix
                yield self.prefix
            for delta in self.generation:
                self.shown += delta
                # the first text, then about every second: a crash keeps what was shown so far
                if self.message_id is None or time.monotonic() - checkpointed >= CHECKPOINT_S:
                    self.checkpoint()
                    checkpointed = time.monotonic()
                yield delta
        except ChatLMError:
            pass  # stored below with status "error"; the caller reads .generation.error
        finally:
            if not self.generation.done:  # the reader left early: free the slot, keep the text
                self.generation.cancel()
                self.generation.wait_quietly()
            self.message_id = self.store()

    def run(self) -> str:
        for _ in self:
            pass
        return self.text

    @property
    def text(self) -> str:
        """The answer as stored."""
        return self.final if self.final is not None else self.prefix + self.generation.text

    def fields(self) -> dict[str, Any]:
        """What the answer's row holds besides its text: model, adapter, parameters, prompt, sources, timing."""
        gen = self.generation
        params: dict[str, Any] = gen.params.as_dict()
        if gen.finish_reason:
            params["finish_reason"] = gen.finish_reason  # "length": Continue can go on
        if self.prefix:
            params["continued"] = True
        if self.extract is not None:
            params.update(extractive=True, span=self.short_answer, support_score=self.support_score)
            if gen.decline_score is not None:  # a reader's own "not in the text"
                params["decline_score"] = round(gen.decline_score, 4)
            if gen.span_logprob is not None:  # how sure it was of the span it started
                params["span_logprob"] = round(gen.span_logprob, 4)
        return dict(model_id=self.service.backend.model_id, adapter=self.adapter,
                    generation_params=params, prompt_messages=self.prompt_messages,
                    sources=self.sources, prompt_tokens=gen.prompt_tokens,
                    completion_tokens=gen.completion_tokens,
                    latency_ms=int((time.perf_counter() - self.started) * 1000))

    def checkpoint(self) -> None:
        """Write the text streamed so far (row created at the first text, status ``pending``).
        A failed checkpoint must not break the stream: the answer is stored at its end anyway."""
        try:
            with transaction(self.service.sessions) as s:
                if self.message_id is None:
                    self.message_id = repo.add_message(
                        s, conversation_id=self.conversation_id, role="assistant",
                        content=self.shown, parent_id=self.parent_id, status="pending",
                        **self.fields()).id
                else:
                    repo.update_message(s, message_id=self.message_id, content=self.shown)
        except ChatLMError as exc:
            log.warning("checkpoint of a streaming answer failed: %s", exc.message)
        except IntegrityError:  # the conversation was deleted while it streamed
            log.info("conversation %s is gone; its answer is not stored", self.conversation_id)

    def store(self) -> int | None:
        """The answer as it ended (complete, stopped with its text, or failed), over its checkpoint."""
        gen = self.generation
        self.service.release(self)
        final = dict(content=self.text, error=gen.error,
                     status=STATUS_BY_FINISH.get(gen.finish_reason or "", "complete"),
                     **self.fields())
        try:
            with transaction(self.service.sessions) as s:
                if self.message_id is not None:
                    stored = repo.update_message(s, message_id=self.message_id, **final)
                    return stored.id if stored is not None else None
                return repo.add_message(s, conversation_id=self.conversation_id, role="assistant",
                                        parent_id=self.parent_id, **final).id
        except IntegrityError:  # the conversation was deleted while it streamed
            log.info("conversation %s is gone; its answer is not stored", self.conversation_id)
            return None
