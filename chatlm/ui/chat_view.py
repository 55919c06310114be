"""What every chat handler draws from: a conversation opened as the page shows it (messages,
ids, ratings, its settings and model picker), the chat list, and how an answer that did not end by
itself is marked. ``ChatList`` (the list's handlers) and ``ChatUI`` (the turns) build on ``ChatView``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gradio as gr

from chatlm.adapters.serving import BASE_MODEL, DEFAULT_MODEL
from chatlm.chat.turns import ChatService, can_continue
from chatlm.errors import ChatLMError
from chatlm.identity.accounts import Actor
from chatlm.identity.requests import Who
from chatlm.store.models import utcnow
from chatlm.ui import sidebar
from chatlm.ui.answers import Answers
from chatlm.ui.chat_defaults import chat_settings, new_chat_settings
from chatlm.ui.knowledge import sources_block
from chatlm.ui.outputs import Named

log = logging.getLogger(__name__)
FEEDBACK = {1: "Like", -1: "Dislike"}


Outputs = tuple[Any, ...]

BUTTONS = Named("send_btn", "stop_btn", "watchdog", "retry_btn", "continue_btn")
"""What shows whether an answer is being written: Send or Stop, the watchdog, Retry and Continue."""
VIEW = Named("chat", "ids", "conv_id", "list", "system_prompt", "temperature", "top_p", "max_new", "model",
             "notice", "excluded", "retry_btn", "continue_btn")
"""Opening a chat (``_open``): what the page shows of it."""
UNDONE = VIEW + Named("undo_box", "undo_text", "undo_id")
"""Deleting a chat or undoing that: the view, and the Undo line."""
API = Named("chat", "ids", "conv_id", "list", "notice", "box")
"""The public ``/send``, ``/retry`` and ``/continue``: the chat, where it is, and the message box."""
STARTED = API + BUTTONS
"""A start from the page: as ``API``, and the buttons (Send turns into Stop)."""
FOLLOWED = Named("chat", "ids", "list", "notice") + BUTTONS
"""Following an answer being written, until it is stored."""

ANSWERING = dict(send_btn=gr.update(visible=False), stop_btn=gr.update(visible=True),
                 watchdog=gr.update(active=True), retry_btn=gr.update(interactive=False),
                 continue_btn=gr.update(interactive=False))
"""The ``BUTTONS`` while an answer is being written: Send turns into Stop, Retry and Continue wait
for the end, and the page checks every ``WATCH_S`` that it has not missed the answer's end
(``ChatUI.watch``)."""


def actions(answered: bool) -> dict[str, Any]:
    """Retry and Continue: usable once the chat has an answer (in an empty chat they only said
    "There is no answer to retry")."""
    return dict(retry_btn=gr.update(interactive=answered), continue_btn=gr.update(interactive=answered))


def answered(messages: list[dict[str, str]]) -> bool:
    return any(m["role"] == "assistant" for m in messages)


def idle(has_answer: bool) -> dict[str, Any]:
    """As ``ANSWERING``, once no answer is being written."""
    return dict(send_btn=gr.update(visible=True), stop_btn=gr.update(visible=False),
                watchdog=gr.update(active=False), **actions(has_answer))


IDLE = idle(True)


def drawn(messages: list[dict[str, str]], feedback: list[str | None]) -> Any:
    """The chatbot showing these messages and their ratings."""
    return gr.update(value=messages, feedback_value=feedback)


MODELS_S = 3.0
"""How often a page checks that its model picker still names what this server serves: a promotion
or rollback (from any page) shows in every open page's picker without a reload (``ChatUI.models``)."""


def _chat_id(value: float | None) -> int | None:
    """A conversation id a client sent (a number box gives floats); the service checks it is theirs."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


MARKS = {
    "cut": " … *(cut at the token limit: Continue goes on)*",
    "stopped": " *(stopped)*",
    "error": " *(the answer failed here)*",
    "interrupted": " … *(interrupted: the server stopped while answering)*",
}
"""What follows an answer that did not end by itself: words, not symbols (⏹ and ⚠ were empty
boxes in a browser without an emoji font)."""


def shown_text(message: Any) -> str:
    """A stored message as the chat draws it: an answer that did not end by itself says how it
    ended on the answer (a cut one was marked only in a notice under the chat, gone on reload)."""
    return message.content + MARKS.get(mark(message), "")


def mark(message: Any) -> str:
    """The ``MARKS`` key of a stored message: its status, or ``cut`` for a complete answer that
    reached the token limit."""
    if message.role == "assistant" and message.status == "complete" and can_continue(message):
        return "cut"
    return message.status


class ChatView:
    """The state every chat handler shares (the service, who is asking, the answers being written)
    and how a conversation is drawn for a page."""

    def __init__(self, service: ChatService, who: Who) -> None:
        self.service = service
        self.who = who
        self._followed_at = -MODELS_S  # when ``_served`` last read the registry
        self.answers = Answers(service.backend)

    def _actor(self, request: gr.Request | None) -> Actor:
        """The acting user of this event, from its cookies (never from its inputs)."""
        return self.who.actor(request)

    def _max_new(self) -> int:
        return self.service.settings.max_new_tokens

    def _view(self, actor: Actor, conv_id: int | None
              ) -> tuple[list[dict[str, str]], list[int], list[str | None]]:
        """Chatbot messages, their database ids, and the ratings of the assistant ones."""
        if conv_id is None:
            return [], [], []
        rows = self.service.history(actor, conv_id)
        shown = [(m, r) for m, r in rows if m.role in ("user", "assistant")]
        chunk_ids = [src["chunk_id"] for m, _ in shown if m.role == "assistant" for src in m.sources or ()]
        texts = self.service.library.chunk_texts(chunk_ids) if chunk_ids else {}
        messages = [{"role": m.role, "content": shown_text(m) + (
            sources_block(m.content, m.sources, texts) if m.role == "assistant" and m.sources else "")}
            for m, _ in shown]
        feedback = [FEEDBACK.get(r) if r else None for m, r in shown if m.role == "assistant"]
        return messages, [m.id for m, _ in shown], feedback

    def _sidebar(self, actor: Actor, conv_id: int | None, request: gr.Request | None = None) -> Any:
        """The conversation list in date groups, kept to this page's search."""
        session = request.session_hash if request is not None else None
        page = self.answers.page(session) if session else None
        query = page.query if page else ""
        convs = self.service.conversations(actor, query)
        return gr.update(value=sidebar.listing(convs, conv_id, utcnow(), query,
                                               sidebar.zone(page.tz if page else None)))

    def _served(self) -> tuple[str | None, tuple[str, ...]]:
        """What the model picker names: the served default and the adapters served. The registry
        is read at most once per ``MODELS_S`` for the whole process, however many pages ask (a
        promotion made in a shell or by another server then shows too); otherwise from memory."""
        now = time.monotonic()
        if now - self._followed_at >= MODELS_S:
            self._followed_at = now
            try:
                self.service.adapters.follow_registry()
            except ChatLMError as exc:  # a busy database: the picker says what is served now
                log.warning("could not read the registry: %s", exc.message)
        return self.service.adapters.active, tuple(self.service.adapters.names())

    def _models(self, choice: str | None, served: tuple[str | None, tuple[str, ...]] | None = None, *,
                keep: bool = False) -> Any:
        """The chat's model picker: the served default, the base model, or a served adapter.
        ``keep``: the value is left to the browser (a choice made meanwhile stays) unless ``choice``
        is no longer offered."""
        active, names = served or self._served()
        choices = [(f"Default ({active or 'base model'})", DEFAULT_MODEL), ("Base model", BASE_MODEL),
                   *[(n, n) for n in names]]
        if choice in {c[1] for c in choices}:
            return gr.update(choices=choices) if keep else gr.update(choices=choices, value=choice)
        return gr.update(choices=choices, value=DEFAULT_MODEL)

    def _shows(self, request: gr.Request | None, conv_id: int | None) -> bool:
        if request is None or request.session_hash is None:
            return True
        return self.answers.page(request.session_hash).conv_id == conv_id

    def _open(self, conv_id: int | None, request: gr.Request | None) -> Outputs:
        return VIEW(**self._opened(conv_id, request))

    def _opened(self, conv_id: int | None, request: gr.Request | None) -> dict[str, Any]:
        """The ``VIEW`` of a conversation of the user's (or a new chat), by name."""
        actor = self._actor(request)
        conv = self.service.conversation(actor, conv_id) if conv_id else None  # yours, or refused
        self.answers.show(request.session_hash if request else None, conv_id)
        messages, ids, feedback = self._view(actor, conv_id)
        sys_prompt, settings = (chat_settings(self.service, conv.system_prompt, conv.settings) if conv is not None
                                else new_chat_settings(self.service, actor))
        return dict(
            chat=drawn(messages, feedback), ids=ids, conv_id=conv_id, list=self._sidebar(actor, conv_id, request),
            system_prompt=sys_prompt, temperature=settings["temperature"], top_p=settings["top_p"],
            max_new=settings["max_new_tokens"], model=self._models(settings["model"]), notice="",
            excluded=bool(conv.exclude_from_training) if conv else False, **actions(answered(messages)),
        )
