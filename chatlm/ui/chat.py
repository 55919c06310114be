"""The chat screen: streaming chat, Stop, Retry, ratings, a conversation sidebar and settings.

Sending stores the message at once (or refuses it, leaving it in the box); the answer is then
followed by a second event (see chatlm.ui.answers), so opening another chat neither stops it nor
lets it draw into the chat now shown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import gradio as gr

from chatlm.adapters.serving import BASE_MODEL, DEFAULT_MODEL
from chatlm.errors import ChatLMError, PermissionDeniedError
from chatlm.service import ChatService, Reply, can_continue
from chatlm.store.models import utcnow
from chatlm.store.repo import reason_for
from chatlm.ui import branches, refusals, sidebar
from chatlm.ui.answers import Answers, Pump, Turn
from chatlm.ui.chat_defaults import (
    DEFAULT_MAX_NEW,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    changed_settings,
    chat_settings,
    defaults,
    new_chat_settings,
    plain,
    sampling_params,
    settings_of,
)
from chatlm.ui.knowledge import sources_block
from chatlm.ui.who import Who

FEEDBACK = {1: "Like", -1: "Dislike"}
POLL_S = 0.08
"""How often a page following an answer looks for new text (tokens are shown in batches)."""
STILL_ANSWERING = ("An answer is still being written in this chat: your message stays in the box. "
                   "Send it when the answer ends, or press Stop.")
NOTHING_TO_STOP = "Nothing to stop: no answer is being written in this chat."
Outputs = tuple[Any, ...]
ANSWERING = (gr.update(visible=False), gr.update(visible=True), gr.update(active=True),
             gr.update(interactive=False), gr.update(interactive=False))
"""Send, Stop, the watchdog, Retry and Continue while an answer is being written: Send turns into
Stop, Retry and Continue wait for the end, and the page checks every ``WATCH_S`` that it has not
missed the answer's end (``ChatUI.watch``)."""


def actions(answered: bool) -> tuple[Any, Any]:
    """Retry and Continue: usable once the chat has an answer (in an empty chat they only said
    "There is no answer to retry")."""
    return gr.update(interactive=answered), gr.update(interactive=answered)


def answered(messages: list[dict[str, str]]) -> bool:
    return any(m["role"] == "assistant" for m in messages)


def idle(has_answer: bool) -> Outputs:
    """As ``ANSWERING``, once no answer is being written."""
    return (gr.update(visible=True), gr.update(visible=False), gr.update(active=False), *actions(has_answer))


IDLE = idle(True)
WATCH_S = 2.0
log = logging.getLogger(__name__)
CHAT_HEIGHT = "calc(100dvh - 380px - max(0px, 768px - 100vw) / 5)"
"""The conversation fills the window's height, leaving the tab bar, the model picker, the notice
and the message box in view; a window narrower than 768 px (a phone: the notice wraps to more
lines, the buttons to another row) leaves a little more (76 px at 390 px).
tests/test_browser_layout.py measures it at 1400×900 and 390×844."""
MODELS_S = 3.0
"""How often a page checks that its model picker still names what this server serves: a promotion
or rollback (from any page) shows in every open page's picker without a reload (``ChatUI.models``)."""
NOTHING = (gr.update(),) * 9
"""The outputs of ``follow`` left as they are."""
VIEW_NAMES = ("chat", "ids", "conv_id", "list", "system_prompt", "temperature", "top_p", "max_new", "model",
              "notice", "excluded", "retry", "continue")
"""The outputs of opening a chat (``_open``), in order."""


def _view_unchanged(**changed: Any) -> Outputs:
    """The outputs of opening a chat, all left as they are but those named."""
    return tuple(changed.get(name, gr.update()) for name in VIEW_NAMES)


WELCOME = (
    "### Welcome to chatlm\n"
    "Ask anything, or press **Attach** beside the message box (or drop a file here) to load a text, "
    "and ask about it: answers about a text quote it and show their sources.\n\n"
    "Rate answers with the thumbs under them, up or down (and, if you like, write a better one): "
    "your ratings teach the next version of this model in the **Training** tab.")
EXAMPLES = (
    "Explain how a rainbow forms, in three sentences.",
    "Write a short, friendly note declining a meeting invitation.",
    "Give me five ideas for a rainy Sunday at home.",
)
"""Prompts offered on an empty chat; clicking one sends it."""
NO_STORAGE = ("⚠️ **This Space has no persistent storage**: conversations, ratings, loaded texts and "
              "trained adapters are lost when it restarts. Its owner can add storage in the Space's "
              "settings (Persistent storage), which keeps them in `/data`.")

SIGN_OUT = """() => {
  if (document.querySelector('#sign-link')?.innerText.trim() !== 'Sign out') { location.href = '/login'; return; }
  const form = document.createElement('form');
  form.method = 'post'; form.action = '/logout'; document.body.append(form); form.submit();
}"""
"""The sidebar's Sign in goes to the sign-in page; its Sign out posts the sign-out form."""


class ChatUI:
    """Builds the Blocks and holds the handlers; handlers are functions of their inputs plus the
    answers being written and the conversation each page shows (``answers``)."""

    def __init__(self, service: ChatService, who: Who | None = None) -> None:
        self.service = service
        self.who = Who.of(service, who)
        self._followed_at = -MODELS_S  # when ``_served`` last read the registry
        self.answers = Answers(service.backend)

    # ---- helpers -------------------------------------------------------------------------
    def _uid(self, request: gr.Request | None) -> int:
        """The acting user of this event, from its cookies (never from its inputs)."""
        return self.who.uid(request)

    def _max_new(self) -> int:
        return self.service.settings.max_new_tokens

    def _view(self, uid: int, conv_id: int | None
              ) -> tuple[list[dict[str, str]], list[int], list[str | None]]:
        """Chatbot messages, their database ids, and the ratings of the assistant ones."""
        if conv_id is None:
            return [], [], []
        rows = self.service.history(uid, conv_id)
        shown = [(m, r) for m, r in rows if m.role in ("user", "assistant")]
        chunk_ids = [src["chunk_id"] for m, _ in shown if m.role == "assistant" for src in m.sources or ()]
        texts = self.service.library.chunk_texts(chunk_ids) if chunk_ids else {}
        messages = [{"role": m.role, "content": shown_text(m) + (
            sources_block(m.content, m.sources, texts) if m.role == "assistant" and m.sources else "")}
            for m, _ in shown]
        feedback = [FEEDBACK.get(r) if r else None for m, r in shown if m.role == "assistant"]
        return messages, [m.id for m, _ in shown], feedback

    def _sidebar(self, uid: int, conv_id: int | None, request: gr.Request | None = None) -> Any:
        """The conversation list in date groups, kept to this page's search."""
        session = request.session_hash if request is not None else None
        page = self.answers.page(session) if session else None
        query = page.query if page else ""
        convs = self.service.conversations(uid, query)
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
        uid = self._uid(request)
        conv = self.service.conversation(uid, conv_id) if conv_id else None  # yours, or refused
        self.answers.show(request.session_hash if request else None, conv_id)
        messages, ids, feedback = self._view(uid, conv_id)
        sys_prompt, settings = (chat_settings(self.service, conv.system_prompt, conv.settings) if conv is not None
                                else new_chat_settings(self.service, uid))
        return (
            gr.update(value=messages, feedback_value=feedback), ids, conv_id,
            self._sidebar(uid, conv_id, request), sys_prompt,
            settings["temperature"], settings["top_p"], settings["max_new_tokens"],
            self._models(settings["model"]), "",
            bool(conv.exclude_from_training) if conv else False,
            *actions(answered(messages)),
        )

    # ---- answers being written -----------------------------------------------------------
    def _last_id(self, uid: int, conv_id: int) -> int | None:
        rows = self.service.history(uid, conv_id)
        return rows[-1][0].id if rows else None

    def _turn(self, text: str, conv_id: int | None, sys_prompt: str, settings: dict[str, Any],
              request: gr.Request | None) -> Turn:
        """Store the message and start its answer, or say why not. A refused first message leaves
        no conversation behind; a later one the service stored before refusing stays, for Retry."""
        uid = self._uid(request)
        created = conv_id is None
        if conv_id is None:
            conv_id = self.service.new_conversation(uid, system_prompt=sys_prompt,
                                                    settings=settings).id
        if self.answers.busy(conv_id):
            return Turn(conv_id, notice=STILL_ANSWERING, stored=False)
        before = None if created else self._last_id(uid, conv_id)
        try:
            if not created:
                self.service.update_settings(uid, conv_id, system_prompt=sys_prompt, settings=settings)
            with self.answers.storing:
                pump = self.answers.start(conv_id, lambda: self.service.send(
                    uid, conv_id, text, sampling_params(settings), adapter=settings.get("model")))
        except ChatLMError as exc:
            if created:
                self.service.discard(uid, conv_id)
                return Turn(None, notice=f"{exc.message} Your message was not saved.", stored=False)
            if self._last_id(uid, conv_id) == before:
                return Turn(conv_id, notice=exc.message, stored=False)
            return Turn(conv_id, notice=f"{exc.message} Your message is saved without an answer: "
                                        "press Retry to get one.")
        if pump is None:
            return Turn(conv_id, notice=STILL_ANSWERING, stored=False)
        self.answers.show(request.session_hash if request else None, conv_id)
        return Turn(conv_id, pump)

    def _again(self, conv_id: int | None, start: Callable[[int], Reply],
               request: gr.Request | None) -> Turn:
        """Retry or edit: a new answer in the shown conversation (one at a time)."""
        if conv_id is None:
            return Turn(None, notice="There is no answer to retry.", stored=False)
        uid = self._uid(request)
        try:
            self.service.conversation(uid, conv_id)  # someone else's chat is refused before anything
            with self.answers.storing:
                pump = self.answers.start(conv_id, lambda: start(uid))
        except ChatLMError as exc:
            return Turn(conv_id, notice=exc.message, stored=False)
        if pump is None:
            return Turn(conv_id, notice=STILL_ANSWERING, stored=False)
        self.answers.show(request.session_hash if request else None, conv_id)
        return Turn(conv_id, pump)

    def _retry_reply(self, conv_id: int | None, temperature: float, top_p: float,
                     max_new: int, model: str | None) -> Callable[[int], Reply]:
        """Another answer to the last question; a question left unanswered (the server was busy)
        is asked again as a new branch from the same point."""
        params = sampling_params(settings_of(temperature, top_p, max_new))

        def start(uid: int) -> Reply:
            path = [m for m, _ in self.service.history(uid, conv_id or 0)
                    if m.role in ("user", "assistant")]
            if not path:
                raise ChatLMError("There is no answer to retry.")
            last = path[-1]
            if last.role == "user":
                return self.service.edit(uid, last.id, last.content, params, adapter=model)
            return self.service.retry(uid, last.id, params, adapter=model)

        return start

    def _continue_reply(self, conv_id: int | None, temperature: float, top_p: float,
                        max_new: int, model: str | None) -> Callable[[int], Reply]:
        """Go on writing the last answer (cut at the token limit, or stopped)."""
        params = sampling_params(settings_of(temperature, top_p, max_new))

        def start(uid: int) -> Reply:
            path = [m for m, _ in self.service.history(uid, conv_id or 0) if m.role in ("user", "assistant")]
            if not path or path[-1].role != "assistant":
                raise ChatLMError("There is no answer to continue.")
            return self.service.continue_answer(uid, path[-1].id, params, adapter=model)

        return start

    def _started(self, turn: Turn, box: Any, request: gr.Request | None) -> Outputs:
        """The stored state right after sending: the message (or why not) and its place."""
        if turn.notice:
            gr.Warning(turn.notice)
        uid = self._uid(request)
        messages, ids, feedback = self._view(uid, turn.conv_id)
        if turn.pump is not None:
            messages, ids, feedback = self._question(turn.pump, messages, ids, feedback)
            messages.append({"role": "assistant", "content": ""})
        notice = self.answers.progress(turn.pump) if turn.pump is not None else turn.notice
        return (gr.update(value=messages, feedback_value=feedback), ids, turn.conv_id,
                self._sidebar(uid, turn.conv_id, request), notice, box)

    def _begun(self, turn: Turn, box: Any, request: gr.Request | None) -> Outputs:
        """The browser's outputs of a start: as ``_started``, and Send turns into Stop."""
        if turn.pump is not None:
            return (*self._started(turn, box, request), *ANSWERING)
        shown = self._view(self._uid(request), turn.conv_id)[0]  # a refused message: nothing runs
        return (*self._started(turn, box, request), *idle(answered(shown)))

    async def _stream(self, turn: Turn, box: Any, request: gr.Request | None
                      ) -> AsyncIterator[Outputs]:
        """An endpoint's outputs: the start, then the answer until it is stored."""
        yield await anyio.to_thread.run_sync(self._started, turn, box, request)
        async for out in self._follow(turn.conv_id, turn.pump, request):
            if out is not None:  # a script that opened another chat still gets this answer
                yield out[0], out[1], turn.conv_id, out[2], out[3], gr.update()

    def _question(self, pump: Pump, messages: list[dict[str, str]], ids: list[int],
                  feedback: list[str | None]) -> tuple[list[dict[str, str]], list[int], list[str | None]]:
        """The view up to the question being answered (without the answer's checkpoint row)."""
        parent = pump.reply.parent_id if pump.reply is not None else None
        if parent not in ids:
            return messages, ids, feedback
        n = ids.index(parent) + 1
        answers = sum(m["role"] == "assistant" for m in messages[:n])
        return messages[:n], ids[:n], feedback[:answers]

    async def _follow(self, conv_id: int | None, pump: Pump | None, request: gr.Request | None
                      ) -> AsyncIterator[tuple[Any, Any, Any, str, bool] | None]:
        """(chat, ids, sidebar, notice, answering) while this page shows the conversation whose
        answer ``pump`` writes, then its stored state once; None once the page looks away (an
        event that ends repeats its last output, which must not be the chat the page left)."""
        if pump is None:
            return
        pump.followed = True
        uid = await anyio.to_thread.run_sync(self._uid, request)
        page = self.answers.page(request.session_hash if request else None, conv_id)
        messages, _, _ = self._question(pump, *await anyio.to_thread.run_sync(self._view, uid, conv_id))
        last: tuple[str, str] | None = None
        while not pump.done.is_set():
            async with page.drawing():  # held until Gradio has queued this update
                if page.conv_id != conv_id:
                    yield None
                    return
                now = (pump.text, self.answers.progress(pump))
                if now != last:
                    last = now
                    chat = [*messages, {"role": "assistant", "content": now[0]}]
                    yield gr.update(value=chat), gr.update(), gr.update(), now[1], True
            await asyncio.sleep(POLL_S)
        messages, ids, feedback = await anyio.to_thread.run_sync(self._view, uid, conv_id)
        listed = await anyio.to_thread.run_sync(self._sidebar, uid, conv_id, request)
        async with page.drawing():
            yield ((gr.update(value=messages, feedback_value=feedback), ids, listed, pump.outcome(),
                    False) if page.conv_id == conv_id else None)

    # ---- handlers ------------------------------------------------------------------------
    def load(self, stored_id: int | None, request: gr.Request) -> Outputs:
        """Page load: reopen the conversation this browser had open, else the latest one."""
        uid = self._uid(request)
        convs = self.service.conversations(uid)
        ids = {c.id for c in convs}
        conv_id = stored_id if stored_id in ids else (convs[0].id if convs else None)
        return self._open(conv_id, request)

    def zoned(self, tz: str, request: gr.Request) -> Any:
        """After the page load: the browser's time zone, kept for this page; the list of the chat it
        shows is redrawn by that calendar (a name this machine does not know is UTC: ``sidebar.zone``)."""
        if not request.session_hash:
            return gr.update()
        page = self.answers.page(request.session_hash)
        page.tz = tz[:64] if isinstance(tz, str) else ""
        return self._sidebar(self._uid(request), page.conv_id, request)

    def open(self, conv_id: float | None, request: gr.Request) -> Outputs:
        return self._open(_chat_id(conv_id), request)

    def new(self, request: gr.Request) -> Outputs:
        return self._open(None, request)

    def rename(self, target: int | None, title: str, shown: int | None, request: gr.Request) -> Any:
        """Rename one of the caller's chats (the list's menu, or ``/rename``); the list is redrawn."""
        uid, target = self._uid(request), _chat_id(target)
        if target is None:
            gr.Warning("Open a conversation first.")
            return self._sidebar(uid, shown, request)
        try:
            self.service.rename(uid, target, title)
        except ChatLMError as exc:
            gr.Warning(exc.message)
        return self._sidebar(uid, shown, request)

    def renamed(self, shown: int | None, event: gr.EventData, request: gr.Request) -> Any:
        target, title = sidebar.clicked(event)
        return self.rename(target, title, shown, request)

    def picked(self, event: gr.EventData, request: gr.Request) -> Outputs:
        """A chat clicked in the list: open it (someone else's id is refused like a missing one)."""
        target, _ = sidebar.clicked(event)
        if target is None:
            return _view_unchanged()
        try:
            return self._open(target, request)
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return _view_unchanged()

    def search(self, query: str, shown: int | None, request: gr.Request) -> Any:
        """Keep the list to chats whose title or messages have ``query`` (this page only)."""
        if request is not None and request.session_hash:
            self.answers.page(request.session_hash).query = (query or "")[:200]
        return self._sidebar(self._uid(request), shown, request)

    def whoami(self, request: gr.Request) -> tuple[str, Any, Any, Any]:
        """Who is signed in, the sign-out (or sign-in) link, and the admin's tabs shown to admins
        only (Training; Admin only when there are accounts to manage). The link is a button: Gradio
        opens every Markdown link in a new tab, and signing out there left this page as it was.
        Sign out is a POST (``SIGN_OUT``): the server ends no session on a GET another site can send."""
        if self.service.settings.auth == "none":
            return "", gr.update(visible=True), gr.update(visible=False), gr.update(visible=False)
        actor = self.who.actor(request)
        if actor.is_guest:
            line = "You are a **guest**: your chats stay in this browser."
            link = gr.update(value="Sign in", visible=True)
        else:
            role = " (admin)" if actor.is_admin else ""
            line = f"Signed in as **{actor.name}**{role}."
            link = gr.update(value="Sign out", visible=True)
        return line, gr.update(visible=actor.is_admin), gr.update(visible=actor.is_admin), link

    def models(self, choice: str | None, drawn: Any, request: gr.Request) -> tuple[Any, Any]:
        """A page's model picker and what it last drew, every ``MODELS_S`` and after Promote or Roll
        back: redrawn when the default or the adapters served changed since this page last drew it
        (a promotion or rollback on any page, for every user), the user's choice kept while it is
        still offered; otherwise nothing changes (no flicker). Cheap: the service's memory only."""
        try:
            self.who.actor(request)  # a page whose session ended learns nothing, and hears nothing
        except PermissionDeniedError:
            return gr.update(), gr.update()
        served = self._served()
        if served == drawn:
            return gr.update(), gr.update()
        return self._models(choice, served, keep=True), served

    def sidebar(self, conv_id: int | None, request: gr.Request) -> Any:
        return self._sidebar(self._uid(request), conv_id, request)

    def delete(self, target: int | None, shown: int | None, request: gr.Request) -> Outputs:
        """Delete one of the caller's chats at once and offer Undo; a page that showed it opens
        the latest chat left. (The view's outputs, then the Undo bar, its words and the id.)"""
        uid, target = self._uid(request), _chat_id(target)
        if target is None:
            gr.Warning("There is no conversation to delete.")
            return (*_view_unchanged(), *(gr.update(),) * 3)
        try:
            title = self.service.delete(uid, target)
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return (*_view_unchanged(), *(gr.update(),) * 3)
        if target == shown or shown is None:
            view = self.load(None, request)
        else:
            view = _view_unchanged(list=self._sidebar(uid, shown, request))
        return (*view, gr.update(visible=True), f"Deleted “{plain(title)}”.", target)

    def undoable(self, request: gr.Request) -> tuple[Any, str, int | None]:
        """At page load: the Undo bar for the user's latest delete still in its window (a reload
        used to lose it), else none."""
        last = self.service.last_deleted(self._uid(request))
        if last is None:
            return gr.update(visible=False), "", None
        return gr.update(visible=True), f"Deleted “{plain(last[1])}”.", last[0]

    def deleted(self, shown: int | None, event: gr.EventData, request: gr.Request) -> Outputs:
        target, _ = sidebar.clicked(event)
        return self.delete(target, shown, request)

    def undo(self, target: int | None, request: gr.Request) -> Outputs:
        """Bring a deleted chat back (within ``repo.UNDO_WINDOW``) and open it."""
        hidden, target = (gr.update(visible=False), "", None), _chat_id(target)
        if target is None:
            return (*_view_unchanged(), *hidden)
        try:
            self.service.restore(self._uid(request), target)
        except ChatLMError as exc:
            gr.Warning(exc.message)
            return (*_view_unchanged(), *hidden)
        return (*self._open(target, request), *hidden)

    def submit(self, text: str, conv_id: int | None, sys_prompt: str, temperature: float,
               top_p: float, max_new: int, model: str | None, request: gr.Request) -> Outputs:
        """Send or Enter: store the message and start its answer, clearing the box at once (the
        answer is followed by ``follow``); a refused message stays in the box."""
        if not text or not text.strip():
            gr.Warning("Type a message first.")
            return (gr.update(),) * 11
        turn = self._turn(text, conv_id, sys_prompt, settings_of(temperature, top_p, max_new, model), request)
        return self._begun(turn, "" if turn.stored else gr.update(), request)

    async def send(self, text: str, conv_id: int | None, sys_prompt: str, temperature: float,
                   top_p: float, max_new: int, model: str | None, request: gr.Request) -> AsyncIterator[Outputs]:
        """The ``/send`` endpoint: the stored message (or why not) at once, then the answer as
        it streams, then the stored state (ids, ratings)."""
        if not text or not text.strip():
            gr.Warning("Type a message first.")
            return
        turn = await anyio.to_thread.run_sync(
            self._turn, text, conv_id, sys_prompt, settings_of(temperature, top_p, max_new, model), request)
        async for out in self._stream(turn, "" if turn.stored else text, request):
            yield out

    def retry_start(self, conv_id: int | None, temperature: float, top_p: float, max_new: int,
                    model: str | None, request: gr.Request) -> Outputs:
        """Retry: start another answer to the last question (followed by ``follow``)."""
        turn = self._again(conv_id, self._retry_reply(conv_id, temperature, top_p, max_new, model), request)
        return self._begun(turn, gr.update(), request)

    async def retry(self, conv_id: int | None, temperature: float, top_p: float, max_new: int,
                    model: str | None, request: gr.Request) -> AsyncIterator[Outputs]:
        """The ``/retry`` endpoint: a new answer to the last question, streamed."""
        start = self._retry_reply(conv_id, temperature, top_p, max_new, model)
        async for out in self._again_streamed(conv_id, start, request):  # a generator, so Gradio streams it
            yield out

    def continue_start(self, conv_id: int | None, temperature: float, top_p: float, max_new: int,
                       model: str | None, request: gr.Request) -> Outputs:
        """Continue: go on writing the last answer, as a new alternative (followed by ``follow``)."""
        turn = self._again(conv_id, self._continue_reply(conv_id, temperature, top_p, max_new, model), request)
        return self._begun(turn, gr.update(), request)

    async def continue_answer(self, conv_id: int | None, temperature: float, top_p: float, max_new: int,
                              model: str | None, request: gr.Request) -> AsyncIterator[Outputs]:
        """The ``/continue`` endpoint: the last answer, cut or stopped, written on, streamed."""
        start = self._continue_reply(conv_id, temperature, top_p, max_new, model)
        async for out in self._again_streamed(conv_id, start, request):
            yield out

    async def _again_streamed(self, conv_id: int | None, start: Callable[[int], Reply],
                              request: gr.Request) -> AsyncIterator[Outputs]:
        turn = await anyio.to_thread.run_sync(self._again, conv_id, start, request)
        async for out in self._stream(turn, gr.update(), request):
            yield out

    def edit(self, conv_id: int | None, ids: list[int], temperature: float, top_p: float,
             max_new: int, model: str | None, request: gr.Request, data: gr.EditData) -> Outputs:
        """An edited user message starts a new branch; the old branch stays (page back to it)."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        if conv_id is None or not 0 <= index < len(ids):
            return (gr.update(),) * 11
        params = sampling_params(settings_of(temperature, top_p, max_new))
        turn = self._again(conv_id, lambda uid: self.service.edit(uid, ids[index], str(data.value),
                                                                   params, adapter=model), request)
        return self._begun(turn, gr.update(), request)

    async def follow(self, conv_id: int | None, request: gr.Request) -> AsyncIterator[Outputs]:
        """Draw the answer being written in the conversation this page shows, until it ends or the
        page opens another one; then Send is back."""
        uid = await anyio.to_thread.run_sync(self._uid, request)
        if conv_id is not None:  # only one's own conversation's answer can be followed
            await anyio.to_thread.run_sync(self.service.conversation, uid, conv_id)
        pump = self.answers.running(conv_id) or self.answers.unseen(conv_id)
        async for out in self._follow(conv_id, pump, request):
            if out is not None:
                yield (*out[:4], *(ANSWERING if out[4] else IDLE))
        if pump is None:  # no answer, or it ended before this page came
            messages, ids, feedback = await anyio.to_thread.run_sync(self._view, uid, conv_id)
            async with self.answers.page(request.session_hash if request else None,
                                         conv_id).drawing():
                if conv_id is not None and self._shows(request, conv_id):
                    yield (gr.update(value=messages, feedback_value=feedback), ids, *NOTHING[:2],
                           *idle(answered(messages)))
                elif self._shows(request, conv_id):
                    yield (*NOTHING[:4], *idle(False))
        # The event's end repeats its last output, maybe after the page moved on: make it nothing
        # (and never end without output: Gradio would send None for each).
        yield NOTHING

    def watch(self, conv_id: int | None, request: gr.Request) -> Outputs:
        """Every ``WATCH_S`` while the page shows Stop: once no answer is being written in its chat,
        the chat as stored, its last answer's notice, and Send. A page whose follower's last update
        never arrived (seen in loaded test runs, cause not found) was left with an empty answer and
        Stop for good; this is the net under it. While an answer runs, nothing changes."""
        if conv_id is not None and self.answers.busy(conv_id):
            return NOTHING
        uid = self._uid(request)
        messages, ids, feedback = self._view(uid, conv_id)
        ended = self.answers.last(conv_id)
        return (gr.update(value=messages, feedback_value=feedback), ids, gr.update(),
                ended.outcome() if ended is not None else gr.update(), *IDLE)

    def stop(self, conv_id: int | None, request: gr.Request) -> Any:
        """Stop this chat's answer; the notice then says what was kept (``follow`` writes it), or
        that there was nothing to stop (a Stop that came after the end, or from a script)."""
        if conv_id is not None and self.service.stop(self._uid(request), conv_id):
            return gr.update()
        return NOTHING_TO_STOP

    def like(self, ids: list[int], conv_id: int | None, data: gr.LikeData,
             request: gr.Request = None) -> int | None:  # type: ignore[assignment]
        """Save 👍/👎 and select the answer for the rating-details panel. A thumb clicked as soon as
        an answer's text is shown may come before the page holds that answer's id (the answer's last
        update brings it): the ids are then read from the conversation as stored."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        if index >= len(ids) and conv_id is not None:
            ids = self._view(self._uid(request), conv_id)[1]
        if not 0 <= index < len(ids):
            return None
        value = {True: 1, False: -1, "Like": 1, "Dislike": -1}.get(data.liked)  # type: ignore[arg-type]
        try:  # a thumb keeps the reason, comment and better answer written in the details panel
            uid = self._uid(request)
            detail = self.service.rating_detail(uid, ids[index]) if value else None
            extra = {k: detail[k] for k in ("reason", "comment", "better_answer")} if detail else {}
            if extra:  # a reason explains a 👎: it goes when the thumb turns up
                extra["reason"] = reason_for(value, extra["reason"])
            self.service.rate(uid, ids[index], value, **extra)
        except ChatLMError as exc:
            gr.Warning(exc.message)
        return ids[index]

    def page(self, conv_id: int | None, ids: list[int], index: int, step: int,
             request: gr.Request | None = None) -> tuple[Any, ...]:
        """Show the previous or next alternative of the message at ``index`` of those shown (an
        index this page did not show changes nothing); the turns after it follow."""
        uid = self._uid(request)
        if conv_id is not None and 0 <= index < len(ids):
            self.service.switch_sibling(uid, ids[index], step)
        messages, ids, feedback = self._view(uid, conv_id)
        return gr.update(value=messages, feedback_value=feedback), ids

    def paged(self, conv_id: int | None, ids: list[int], event: gr.EventData,
              request: gr.Request) -> tuple[Any, ...]:
        """A click on a message's ‹ or ›."""
        hit = branches.clicked(event)
        if hit is None:
            return gr.update(), ids
        return self.page(conv_id, ids, *hit, request)

    def marks(self, conv_id: int | None, ids: list[int], selected: int | None,
              request: gr.Request) -> dict[str, Any]:
        """What the messages carry: ‹ n/m › where a turn has alternatives, and which answer the
        rating form sits under (the one last rated, else the latest)."""
        if conv_id is None or not ids:
            return branches.marks([], None)
        alternatives = self.service.alternatives(self._uid(request), ids)
        return branches.marks(alternatives, ids.index(selected) if selected in ids else None)

    def thumbs(self, conv_id: int | None, request: gr.Request) -> Any:
        """The chat's 👍/👎 as stored (after the rating-details panel changed one)."""
        messages, _, feedback = self._view(self._uid(request), conv_id)
        return gr.update(value=messages, feedback_value=feedback)

    def changed(self, sys_prompt: str, temperature: float, top_p: float, max_new: int) -> tuple[Any, str]:
        """The line at the top of the chat naming the settings that differ from the defaults."""
        said = changed_settings(self.service, sys_prompt, temperature, top_p, max_new)
        return gr.update(visible=bool(said)), ("This chat: " + ", ".join(said) + ".") if said else ""

    def exclude(self, conv_id: int | None, excluded: bool, request: gr.Request) -> None:
        if conv_id is not None:
            self.service.set_excluded(self._uid(request), conv_id, excluded)

    # ---- layout --------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        from chatlm.ui.account import AccountTab
        from chatlm.ui.admin import AdminTab
        from chatlm.ui.feedback import FeedbackPanel, FeedbackTab
        from chatlm.ui.knowledge import KnowledgePanel
        from chatlm.ui.training import TrainingTab

        if self.service.settings.auth == "none":  # made before simultaneous first visitors race to
            self.who.identity.local()
        with gr.Blocks(title="chatlm") as demo:
            if self.service.settings.ephemeral_space:
                gr.Markdown(NO_STORAGE, elem_id="no-storage")
            ids = gr.State([])
            selected = gr.State(None)
            conv_id = gr.State(None)
            stored = gr.BrowserState(None, storage_key="chatlm-conversation")
            zone = gr.Textbox(visible=False, label="time zone")  # the browser's, read by BROWSER_ZONE
            with gr.Sidebar(open=True):
                gr.Markdown("# chatlm", elem_id="app-title")  # the page's one heading, for screen readers
                account = gr.Markdown(elem_id="account")
                sign_link = gr.Button(size="sm", visible=False, elem_id="sign-link")
                gr.Markdown("## Conversations")
                new_btn = gr.Button("New chat", variant="secondary", elem_id="new-chat")
                search = gr.Textbox(label="Search chats", placeholder="Search titles and messages",
                                    elem_id="chat-search", max_lines=1)
                with gr.Group(visible=False, elem_id="undo-box") as undo_box:
                    undo_text = gr.Markdown(elem_id="undo-text")
                    undo_btn = gr.Button("Undo", size="sm", elem_id="undo")
                undo_id = gr.State(None)
                conv_list = sidebar.component()
                excluded = gr.Checkbox(label="Don't use this conversation for training",
                                       elem_id="exclude")
            # a phone wraps the tabs to a second line (a "⋯" menu hid Admin and Account)
            with gr.Tabs(overflow_behavior="wrap", elem_id="tabs"):
                with gr.Tab("Chat", elem_id="chat-tab"):
                    model = gr.Dropdown(label="Model of this chat", choices=[("Default", DEFAULT_MODEL)],
                                        value=DEFAULT_MODEL, elem_id="model")
                    # what differs from the defaults
                    with gr.Row(elem_id="settings-row", visible=False) as settings_row:
                        changed_line = gr.Markdown(elem_id="settings-changed")
                        reset = gr.Button("Reset", size="sm", scale=0, min_width=70, elem_id="settings-reset")
                    drawn = gr.State(None)  # what this page's picker last named (``models``)
                    models_timer = gr.Timer(MODELS_S)
                    # no "chatlm" badge over the chat: it covered the first lines and the 👎 form's title
                    chatbot = gr.Chatbot(height=CHAT_HEIGHT, min_height=240, label="chatlm", show_label=False,
                                         elem_id="chatbot", editable="user",
                                         feedback_options=("Like", "Dislike"), buttons=["copy"],
                                         placeholder=WELCOME, examples=[{"text": t} for t in EXAMPLES])
                    marks = branches.component()
                    notice = gr.Markdown(elem_id="notice")
                    panel = FeedbackPanel(self.service, self.who)  # drawn under the answer it rates (branches)
                    panel.render(conv_id, ids, selected)
                    knowledge = KnowledgePanel(self.service, self.who)
                    knowledge.chips()  # a chip per text loaded into this chat, over the message box
                    with gr.Row(equal_height=True, elem_id="message-row"):  # the box spans the row; small buttons
                        knowledge.attach_button()
                        box = gr.Textbox(placeholder="Ask anything…", show_label=False, scale=12, lines=1,
                                         max_lines=8, elem_id="message", autofocus=True)
                        send_btn = gr.Button("Send", variant="primary", scale=0, min_width=80, elem_id="send")
                        stop_btn = gr.Button("Stop", variant="stop", scale=0, min_width=80, elem_id="stop",
                                             visible=False)
                        retry_btn = gr.Button("Retry", size="sm", scale=0, min_width=80, elem_id="retry")
                        continue_btn = gr.Button("Continue", size="sm", scale=0, min_width=80, elem_id="continue")
                        watchdog = gr.Timer(WATCH_S, active=False)
                        api = gr.Button("API", visible=False)  # carries /send and /retry (ChatInterface's way)
                        target = gr.Number(visible=False, precision=0, label="conversation")  # the API's chat id
                        new_title = gr.Textbox(visible=False, label="title")
                    with gr.Accordion("Generation settings", open=False):
                        sys_prompt = gr.Textbox(label="System prompt", lines=2,
                                                value=self.service.settings.system_prompt,
                                                info="Instructions the model reads before every message of this chat.")
                        temperature = gr.Slider(0, 2, value=DEFAULT_TEMPERATURE, step=0.05, label="Temperature",
                                                info="Higher: more varied answers; 0: the same answer every time.")
                        top_p = gr.Slider(
                            0.05, 1, value=DEFAULT_TOP_P, step=0.05, label="Top-p",
                            info="Only the likeliest next words, together this probability, are drawn from.")
                        max_new = gr.Slider(1, self._max_new(), value=min(DEFAULT_MAX_NEW, self._max_new()),
                                            step=1, label="Maximum new tokens",
                                            info="The longest answer, in tokens (a token is about ¾ of a word).")
                    knowledge.render(conv_id)
                with gr.Tab("Feedback", elem_id="feedback-tab") as feedback_tab:
                    FeedbackTab(self.service, self.who).render(feedback_tab)
                with gr.Tab("Training", elem_id="training-tab",
                            visible=self.service.settings.auth == "none") as training_tab:
                    training = TrainingTab(self.service, self.who)
                    training.render(training_tab)
                accounts_on = self.service.settings.auth != "none"
                with gr.Tab("Admin", elem_id="admin-tab", visible=False) as admin_tab:
                    if accounts_on:  # local mode: hidden and empty (``python -m chatlm users`` there)
                        AdminTab(self.service, self.who).render(admin_tab)
                if accounts_on:
                    with gr.Tab("Account", elem_id="account-tab") as account_tab:
                        AccountTab(self.service, self.who).render(account_tab)

            view = [chatbot, ids, conv_id, conv_list, sys_prompt, temperature, top_p,
                    max_new, model, notice, excluded, retry_btn, continue_btn]
            undone = [*view, undo_box, undo_text, undo_id]
            api_out = [chatbot, ids, conv_id, conv_list, notice, box]
            buttons = [send_btn, stop_btn, watchdog, retry_btn, continue_btn]
            started = [*api_out, *buttons]
            followed = [chatbot, ids, conv_list, notice, *buttons]
            asked = [box, conv_id, sys_prompt, temperature, top_p, max_new, model]
            tuning = [conv_id, temperature, top_p, max_new, model]
            # Answers are followed, not run, by events: none waits in Gradio's queue for a slot
            # (the backend's own bounded queue says "busy" at once instead).
            quick: dict[str, Any] = dict(concurrency_limit=None, api_visibility="private")
            # Gradio's "processing | 0.1s" and "queue: 1/1" go on the chat, never into the notice
            starts: dict[str, Any] = dict(**quick, show_progress_on=[chatbot])
            follow: dict[str, Any] = dict(fn=self.follow, inputs=[conv_id], outputs=followed,
                                          trigger_mode="multiple", show_progress_on=[chatbot], **quick)
            # The public endpoints first, so that they get the names "/send" and "/retry".
            api.click(self.send, asked, api_out, api_name="send", concurrency_limit=None)
            api.click(self.retry, tuning, api_out, api_name="retry", concurrency_limit=None)
            api.click(self.continue_answer, tuning, api_out, api_name="continue", concurrency_limit=None)
            # A page that opens another chat stops drawing the answer it followed (``_shows``), which
            # goes on. (Gradio's ``cancels`` would also undo the new chat's view in the page.)
            for started_by in (
                loading := demo.load(self.load, [stored], view, api_name="load"),
                new_btn.click(self.new, None, view, api_name="new"),
                api.click(self.open, [target], view, api_name="open"),
                conv_list.select(self.picked, None, view, api_visibility="private"),
                conv_list.delete(self.deleted, [conv_id], undone, api_visibility="private"),
                api.click(self.delete, [target, conv_id], undone, api_name="delete"),
                api.click(self.undo, [target], undone, api_name="undo"),
                undo_btn.click(self.undo, [undo_id], undone, api_visibility="private"),
                gr.on([send_btn.click, box.submit], self.submit, asked, started, **starts),
                chatbot.example_select(_example_text, None, [box], **quick).then(self.submit, asked, started,
                                                                                   **starts),
                gr.on([retry_btn.click, chatbot.retry], self.retry_start, tuning, started, **starts),
                continue_btn.click(self.continue_start, tuning, started, **starts),
                chatbot.edit(self.edit, [conv_id, ids, temperature, top_p, max_new, model], started, **starts),
            ):
                started_by.then(**follow)
            # the browser's time zone for the list's dates, once the load has drawn the chat
            loading.then(self.zoned, [zone], [conv_list], js=BROWSER_ZONE, api_visibility="private").then(
                self.undoable, None, [undo_box, undo_text, undo_id], api_visibility="private")
            demo.load(self.whoami, None, [account, training_tab, admin_tab, sign_link],
                      api_visibility="private")
            sign_link.click(None, None, None, js=SIGN_OUT)
            conv_id.change(lambda c: c, [conv_id], [stored], api_visibility="private")
            # a chat created outside send (loading a text into a new chat) shows in the sidebar at once
            conv_id.change(self.sidebar, [conv_id], [conv_list], api_visibility="private")
            conv_list.edit(self.renamed, [conv_id], [conv_list], api_visibility="private")
            api.click(self.rename, [target, new_title, conv_id], [conv_list], api_name="rename")
            search.change(self.search, [search, conv_id], [conv_list], trigger_mode="always_last",
                         api_visibility="private")
            watchdog.tick(self.watch, [conv_id], followed, show_progress="hidden", **quick)
            # the picker follows a promotion or rollback: every page within MODELS_S, the promoting one at once;
            # the tick skips the queue (no queue slot, and a page's "an event ended" signals stay its user's)
            models_timer.tick(self.models, [model, drawn], [model, drawn], show_progress="hidden", queue=False,
                              api_visibility="private")
            for changed in (event.then for event in training.promotions):
                changed(self.models, [model, drawn], [model, drawn], show_progress="hidden", **quick)
            knobs = [sys_prompt, temperature, top_p, max_new]
            gr.on([k.change for k in knobs], self.changed, knobs, [settings_row, changed_line], queue=False,
                  show_progress="hidden", api_visibility="private")
            reset.click(lambda: defaults(self.service), None, knobs, queue=False, api_visibility="private")
            stop_btn.click(self.stop, [conv_id], [notice], concurrency_limit=None, api_name="stop")
            chatbot.like(self.like, [ids, conv_id], [selected], concurrency_limit=None, api_name="rate").then(
                panel.show, [selected], panel.details, concurrency_limit=None, api_visibility="private").then(
                panel.open_on_dislike, [selected], [panel.box], concurrency_limit=None, api_visibility="private")
            for rated in panel.rated:
                rated.then(self.thumbs, [conv_id], [chatbot], api_visibility="private")
            # ‹ n/m › on each message with alternatives, and the rating form under its answer
            marks.select(self.paged, [conv_id, ids], [chatbot, ids], api_visibility="private")
            gr.on([ids.change, selected.change], self.marks, [conv_id, ids, selected], [marks],
                  api_visibility="private")
            excluded.input(self.exclude, [conv_id, excluded], None, api_name="exclude")
        return refusals.quiet(demo)  # a refused call: one log line, no traceback


BROWSER_ZONE = "(zone) => [Intl.DateTimeFormat().resolvedOptions().timeZone || '']"
"""``zoned``'s inputs, with the browser's time zone in place of the hidden box's value."""


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


def _example_text(event: gr.SelectData) -> str:
    """The text of the example prompt a visitor clicked on an empty chat (sent next)."""
    value = event.value if isinstance(event.value, dict) else {}
    return str(value.get("text", ""))
