"""One chat turn: store the question, fit the prompt, generate through the backend, store the answer.

The UI, the CLI and the API call this; it knows the store and the engine, they do not know each
other.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from chatlm.adapters.scope import asked
from chatlm.adapters.serving import BASE_MODEL, Serving
from chatlm.chat.conversations import Conversations
from chatlm.chat.library import Library
from chatlm.chat.limits import GUESTS, FairShare
from chatlm.chat.prompts import NOT_FOUND, fit_history, grounded_question
from chatlm.chat.reply import Reply
from chatlm.config import Settings
from chatlm.engine.backend import Backend
from chatlm.engine.generation import Generation
from chatlm.engine.params import SamplingParams
from chatlm.errors import ChatLMError, InputError
from chatlm.identity.accounts import Actor
from chatlm.knowledge.answer import (
    COPY_SENTENCES,
    SURE_SPAN,
    Support,
    answer_text,
    decline_text,
    declines,
    find_support,
    is_factoid,
    question_words,
    sentences,
    short_form,
)
from chatlm.store import repo
from chatlm.store.db import transaction
from chatlm.store.models import Message

MAX_MESSAGE_CHARS = 100_000
TITLE_CHARS = 48
log = logging.getLogger(__name__)


class ChatService(Conversations):
    """Everything a chat client does, as plain methods over the store and the backend: the
    conversations' rows (``Conversations``), and the turns that generate."""

    def __init__(self, settings: Settings, backend: Backend, sessions: sessionmaker[Session],
                 library: Library | None = None, adapters: Serving | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self.sessions = sessions
        self.fair = (FairShare(settings.user_answers, settings.user_requests_per_minute)
                     if settings.auth != "none" else None)
        """Per-user limits, when there are users to share the backend between."""
        self.library = library or Library(sessions)
        self._running: dict[int, Generation] = {}
        self._lock = threading.Lock()
        self.adapters = adapters or Serving(settings, backend, sessions)
        """Which adapter answers (the default, the reader), following the registry."""

    # ---- conversations (the rest is chatlm.chat.conversations.Conversations) ----------------------
    def delete(self, actor: Actor, conversation_id: int) -> str:
        """Delete a conversation (its answer stops); ``restore`` can bring it back for
        ``repo.UNDO_WINDOW``. Returns its title, for the Undo notice."""
        self.stop(actor, conversation_id)
        with transaction(self.sessions) as s:
            return repo.delete_conversation(s, conversation_id=conversation_id, user_id=actor.user_id).title

    # ---- generation ----------------------------------------------------------------------
    def send(self, actor: Actor, conversation_id: int, content: str,
             params: SamplingParams, *, adapter: str | None = None, k: int = 3,
             short: bool = False) -> Reply:
        """Commit the user's message, then start the answer (stored when it ends or stops).
        When the conversation has documents, the answer rests on the top-``k`` passages.
        ``adapter``: None (or ``DEFAULT_MODEL``) for the served default, ``BASE_MODEL``, or a name."""
        chosen_model = adapter
        adapter = self.adapters.choose(adapter)
        if not content or not content.strip():
            raise InputError("The message is empty.")
        if len(content) > MAX_MESSAGE_CHARS:
            raise InputError(f"A message may have at most {MAX_MESSAGE_CHARS} characters.")
        params = params.clamped(self.settings.max_new_tokens)
        # ownership first, then retrieval outside the write transaction: retrieval opens sessions
        # of its own, and holding one here while it waits let 8+ concurrent sends drain the pool
        self.conversation(actor, conversation_id)
        self._admit(actor)  # over the user's share: refused before anything is stored
        passages = self.library.retrieve(conversation_id, content, k=k)
        numbered = [(p.number, p.document, p.text) for p in passages]
        extract = numbered if passages and self._can_extract(content) else None
        adapter = self._route(adapter, content, reading=bool(extract))
        if extract and (taught := self.library.passages_with(conversation_id, self.adapters.taught_passages(
                adapter, content, self._embed))):  # a question a user corrected: where its answer was taught
            passages, numbered = taught, [(p.number, p.document, p.text) for p in taught]
            extract = numbered
        if extract and adapter is None and chosen_model != BASE_MODEL and self.adapters.reader:
            adapter = self.adapters.reader  # the default model reads a loaded text with the reader adapter
        with transaction(self.sessions) as s:
            conv = repo.get_conversation(s, conversation_id=conversation_id, user_id=actor.user_id)
            path = repo.branch(s, conversation=conv)
            history = [{"role": m.role, "content": m.content} for m in path if m.content]
            if extract:
                # answered from this question's passages alone (no earlier answer to copy), greedily
                history = [{"role": "user", "content": grounded_question(content, numbered, short=True)}]
                params = replace(params, temperature=0.0)
            else:
                asked = grounded_question(content, numbered, short=short) if passages else content
                history.append({"role": "user", "content": asked})
            plan = self._plan(conv.system_prompt, history, params)  # raises before storing
            if conv.title == "New chat":
                conv.title = _title(content)
            user_msg = repo.add_message(s, conversation_id=conv.id, role="user", content=content,
                                        parent_id=path[-1].id if path else None)
        return self._start(conversation_id, user_msg.id, plan.messages, plan.dropped, params,
                           adapter, [p.as_source() for p in passages] or None, question=content,
                           extract=extract, actor=actor)

    def _route(self, adapter: str | None, question: str, *, reading: bool = False) -> str | None:
        """The adapter that answers this question: a corrections round answers only what it was
        taught (``chatlm.adapters.scope``)."""
        return self.adapters.route(adapter, question, self._embed, reading=reading)

    def _embed(self, texts: Any) -> Any:
        return self.library.embedder.embed(texts)

    def _can_extract(self, request: str) -> bool:
        """Factoid questions get a copied span where the backend can constrain decoding (a remote
        engine cannot: it answers free-form, grounded and cited)."""
        return self.backend.supports_copy and is_factoid(request)

    def retry(self, actor: Actor, message_id: int, params: SamplingParams, *,
              adapter: str | None = None) -> Reply:
        """A new answer to the same question, stored as a sibling of ``message_id``."""
        adapter = self.adapters.choose(adapter)
        params = params.clamped(self.settings.max_new_tokens)
        self._admit(actor)
        with transaction(self.sessions) as s:
            answer = repo.get_message(s, message_id=message_id, user_id=actor.user_id)
            if answer.role != "assistant" or answer.parent_id is None:
                raise InputError("Only an answer can be retried.")
            conv = repo.get_conversation(s, conversation_id=answer.conversation_id,
                                         user_id=actor.user_id)
            conv.active_leaf_id = answer.parent_id
            if answer.prompt_messages:  # same prompt, passages included: a true sibling
                messages, dropped, sources = answer.prompt_messages, 0, answer.sources
            else:
                path = repo.branch(s, conversation=conv)
                history = [{"role": m.role, "content": m.content} for m in path if m.content]
                plan = self._plan(conv.system_prompt, history, params)
                messages, dropped, sources = plan.messages, plan.dropped, None
        adapter = self._route(adapter, asked(messages))
        return self._start(conv.id, answer.parent_id, messages, dropped, params, adapter, sources,
                           actor=actor)

    def edit(self, actor: Actor, message_id: int, content: str, params: SamplingParams, *,
             adapter: str | None = None) -> Reply:
        """Edit an earlier user message: a new branch from the same point; the old one is kept."""
        with transaction(self.sessions) as s:
            original = repo.get_message(s, message_id=message_id, user_id=actor.user_id)
            if original.role != "user":
                raise InputError("Only your own messages can be edited.")
            conv = repo.get_conversation(s, conversation_id=original.conversation_id, user_id=actor.user_id)
            previous_leaf = conv.active_leaf_id
            # send() continues from here; a first message's edit starts a new root
            conv.active_leaf_id = original.parent_id if original.parent_id is not None else repo.EMPTY_BRANCH
            conv_id = conv.id
        try:
            return self.send(actor, conv_id, content, params, adapter=adapter)
        except ChatLMError:
            with transaction(self.sessions) as s:  # nothing was stored: show the old branch again
                repo.get_conversation(s, conversation_id=conv_id, user_id=actor.user_id).active_leaf_id = previous_leaf
            raise

    def continue_answer(self, actor: Actor, message_id: int, params: SamplingParams, *,
                        adapter: str | None = None) -> Reply:
        """Go on writing an answer that was cut at the token limit or stopped: a new alternative of
        the same turn that starts with the old text (the cut one stays, a page back)."""
        adapter = self.adapters.choose(adapter)
        params = params.clamped(self.settings.max_new_tokens)
        self._admit(actor)
        with transaction(self.sessions) as s:
            answer = repo.get_message(s, message_id=message_id, user_id=actor.user_id)
            if answer.role != "assistant" or answer.parent_id is None or not can_continue(answer):
                raise InputError("Only an answer that was cut at the token limit or stopped can be "
                                 "continued.")
            conv = repo.get_conversation(s, conversation_id=answer.conversation_id, user_id=actor.user_id)
            conv.active_leaf_id = answer.parent_id
            if answer.prompt_messages:
                prompt = list(answer.prompt_messages)
            else:
                path = repo.branch(s, conversation=conv)
                history = [{"role": m.role, "content": m.content} for m in path if m.content]
                prompt = self._plan(conv.system_prompt, history, params).messages
            partial, sources, conv_id, parent_id = answer.content, answer.sources, conv.id, answer.parent_id
        adapter = self._route(adapter, asked(prompt))
        reply = self._start(conv_id, parent_id, [*prompt, {"role": "assistant", "content": partial}], 0,
                            params, adapter, sources, actor=actor, continue_final=True)
        reply.prompt_messages, reply.prefix = prompt, partial  # trained on as one whole answer
        return reply

    def retry_last(self, actor: Actor, conversation_id: int, params: SamplingParams, *,
                   adapter: str | None = None) -> Reply:
        """Retry at the end of the conversation's shown branch: another answer to the last question,
        or, for a question left unanswered (the server was busy), that question asked again as a
        new branch from the same point."""
        last = self._last_turn(actor, conversation_id, "There is no answer to retry.")
        if last.role == "user":
            return self.edit(actor, last.id, last.content, params, adapter=adapter)
        return self.retry(actor, last.id, params, adapter=adapter)

    def continue_last(self, actor: Actor, conversation_id: int, params: SamplingParams, *,
                      adapter: str | None = None) -> Reply:
        """Continue at the end of the shown branch: its last answer (cut or stopped) written on."""
        last = self._last_turn(actor, conversation_id, "There is no answer to continue.")
        if last.role != "assistant":
            raise InputError("There is no answer to continue.")
        return self.continue_answer(actor, last.id, params, adapter=adapter)

    def _last_turn(self, actor: Actor, conversation_id: int, none: str) -> Message:
        path = [m for m, _ in self.history(actor, conversation_id) if m.role in ("user", "assistant")]
        if not path:
            raise InputError(none)
        return path[-1]

    def siblings(self, actor: Actor, message_id: int) -> tuple[int, int]:
        """(position from 1, count) of a message among the alternatives of its turn."""
        _, pos, count = self.alternatives(actor, [message_id])[0]
        return pos, count

    def alternatives(self, actor: Actor, message_ids: list[int]) -> list[tuple[str, int, int]]:
        """(role, position from 1, count) of each message among its turn's alternatives, in one
        transaction (the pager asks for every turn of the shown branch)."""
        with transaction(self.sessions) as s:
            out = []
            for message_id in message_ids:
                msg = repo.get_message(s, message_id=message_id, user_id=actor.user_id)
                ids = [m.id for m in repo.siblings(s, message=msg)]
                out.append((msg.role, ids.index(msg.id) + 1, len(ids)))
            return out

    def switch_sibling(self, actor: Actor, message_id: int, step: int) -> int:
        """Show the previous (-1) or next (+1) alternative of a turn; returns the shown message id."""
        with transaction(self.sessions) as s:
            msg = repo.get_message(s, message_id=message_id, user_id=actor.user_id)
            alts = repo.siblings(s, message=msg)
            pos = [m.id for m in alts].index(msg.id)
            target = alts[max(0, min(len(alts) - 1, pos + step))]
            conv = repo.get_conversation(s, conversation_id=msg.conversation_id, user_id=actor.user_id)
            conv.active_leaf_id = repo.latest_leaf(s, message=target).id
            return target.id

    def generate(self, messages: list[dict[str, str]], params: SamplingParams,
                 adapter: str | None = None, *, actor: Actor | None = None,
                 continue_final: bool = False) -> Generation:
        """A stateless generation (the API): nothing is stored; a too-long prompt is refused.
        ``continue_final``: go on writing the last message, an assistant's."""
        if not messages:
            raise InputError("messages must not be empty.")
        if continue_final and messages[-1]["role"] != "assistant":
            raise InputError("continue_final_message needs the last message to be the assistant's.")
        if actor is not None:
            self._admit(actor)
        adapter = self._route(adapter, asked(messages))
        return self._chat(messages, params, adapter, actor, continue_final=continue_final)

    def _chat(self, messages: list[dict[str, str]], params: SamplingParams, adapter: str | None,
              actor: Actor | None, **options: Any) -> Generation:
        """Start a generation on the backend, counted against the user's fair share."""
        gen = self.backend.chat(messages, params, adapter=adapter, **options)
        if self.fair is not None and actor is not None:
            self.fair.track(self._share(actor), gen)
        return gen

    def _admit(self, actor: Actor) -> None:
        if self.fair is not None:
            self.fair.admit(self._share(actor))

    @staticmethod
    def _share(actor: Actor) -> int:
        """The fair share a user draws on: their own, or for a guest the one all guests share."""
        return GUESTS if actor.is_guest else actor.user_id

    def stop(self, actor: Actor, conversation_id: int) -> bool:
        """Stop the answer being generated in this conversation of the user's, if any."""
        self.conversation(actor, conversation_id)  # someone else's (or no) conversation: NotFound
        with self._lock:
            gen = self._running.get(conversation_id)
        if gen is None:
            return False
        gen.cancel()
        return True

    def _plan(self, system_prompt: str, history: list[dict[str, str]], params: SamplingParams):
        return fit_history(system_prompt, history, count_tokens=self.backend.count_tokens,
                           context_window=self.backend.context_window,
                           max_new_tokens=params.max_new_tokens)

    def _start(self, conversation_id: int, parent_id: int, messages: list[dict[str, str]],
               dropped: int, params: SamplingParams, adapter: str | None,
               sources: list[dict[str, Any]] | None = None, *, question: str = "",
               extract: list[tuple[int, str, str]] | None = None, actor: Actor | None = None,
               continue_final: bool = False) -> Reply:
        chosen: list[Support] | None = None
        score = None
        extra: dict[str, Any] = {}  # what only the local engine takes, passed only when asked for
        if extract:  # a span of the best sentence; a decline quotes another one
            chosen, score = self._best_sentences(question, extract)
            extra = {"copy_from": [c.sentence for c in chosen[:COPY_SENTENCES]],
                     "avoid_first": question_words(question)}
            if self.adapters.reads(adapter):  # every sentence, the best unless it is sure; its decline is scored
                # a question it was taught: the span it learnt, from whichever sentence holds it
                prefer = [] if self.adapters.taught(adapter) else [0]
                extra.update(copy_from=[c.sentence for c in chosen], decline=NOT_FOUND, prefer=prefer,
                             sure=SURE_SPAN)
        gen = self._chat(messages, params, adapter, actor, continue_final=continue_final, **extra)
        with self._lock:
            old = self._running.get(conversation_id)
            if old is not None:
                old.cancel()
            self._running[conversation_id] = gen
        return Reply(service=self, generation=gen, conversation_id=conversation_id,
                     parent_id=parent_id, prompt_messages=messages, dropped=dropped,
                     adapter=adapter, sources=sources, question=question, extract=chosen,
                     support_score=score)

    def _best_sentences(self, question: str, passages: list[tuple[int, str, str]]) -> tuple[list[Support], float]:
        """The passages' sentences, best agreement with the question under the embedding model first
        (the span is copied from the first ``COPY_SENTENCES``), and the best agreement: the
        abstention signal."""
        import numpy as np

        candidates = sentences(passages)
        embedder = self.library.embedder
        q = np.asarray(embedder.embed_query(question), dtype=np.float32)
        m = np.asarray(embedder.embed([c.sentence for c in candidates]), dtype=np.float32)
        sims = (m @ q) / (np.linalg.norm(m, axis=1) * (np.linalg.norm(q) or 1.0) + 1e-9)
        order = np.argsort(-sims, kind="stable")
        return [candidates[i] for i in order], round(float(sims[order[0]]), 4)

    def extractive_text(self, reply: Reply) -> str:
        """Span + citation + supporting sentence, or the decline when the support score is below the
        calibrated threshold; the cited passage's sentence offsets go into the stored sources."""
        gen = reply.generation
        if gen.finish_reason not in ("stop", "length") or not reply.extract:
            return gen.text  # stopped or failed: what there is, marked as such
        support = find_support(gen.text, reply.extract)
        if support is None or self._declines(reply):
            reply.short_answer = ""
            # never quote, with a decline, the sentence that holds the span it would have given
            span = short_form(gen.text).lower()
            best = next((c for c in reply.extract if not span or span not in c.sentence.lower()), None)
            return decline_text((best.number, best.document, best.sentence) if best else None)
        reply.short_answer = short_form(gen.text)
        for source in reply.sources or []:
            if source.get("n") == support.number:
                source.update(cited=True, sentence=[support.start, support.end])
        return answer_text(gen.text, support)

    def _declines(self, reply: Reply) -> bool:
        gen = reply.generation
        return declines(reply.support_score or 0.0, self.settings.abstain_threshold,
                        decline_score=gen.decline_score, span_logprob=gen.span_logprob,
                        taught=self.adapters.taught(reply.adapter))

    def release(self, reply: Reply) -> None:
        """An answer has ended: Stop no longer finds it (a newer one in its chat stays)."""
        with self._lock:
            if self._running.get(reply.conversation_id) is reply.generation:
                del self._running[reply.conversation_id]

    def mark_interrupted(self) -> int:
        """At start: answers that were streaming when the last process died keep their checkpointed
        text and say ``interrupted``, as Stop says ``stopped``."""
        with transaction(self.sessions) as s:
            return repo.mark_interrupted(s)


def can_continue(answer: Message) -> bool:
    """An answer cut at the token limit or stopped (a quoted, extractive one is whole as it is)."""
    params = answer.generation_params or {}
    if params.get("extractive") or answer.status not in ("complete", "stopped", "interrupted"):
        return False
    if answer.status != "complete":
        return bool(answer.content)
    if "finish_reason" in params:
        return params["finish_reason"] == "length"
    cap = params.get("max_new_tokens")  # stored before finish reasons were: the cap was reached
    return bool(cap) and (answer.completion_tokens or 0) >= int(cap)


def _title(content: str) -> str:
    words = " ".join(content.split())
    return words if len(words) <= TITLE_CHARS else words[: TITLE_CHARS - 1].rstrip() + "…"
