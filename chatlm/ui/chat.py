"""The chat screen: streaming chat, Stop, Retry, ratings, a conversation sidebar and settings.

Sending stores the message at once (or refuses it, leaving it in the box); the answer is then
followed by a second event (see chatlm.ui.answers), so opening another chat neither stops it nor
lets it draw into the chat now shown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import gradio as gr

from chatlm.chat.reply import Reply
from chatlm.errors import ChatLMError
from chatlm.identity.accounts import Actor
from chatlm.store.repo import reason_for
from chatlm.ui import branches
from chatlm.ui.answers import Pump, Turn
from chatlm.ui.chat_defaults import (
    changed_settings,
    sampling_params,
    settings_of,
)
from chatlm.ui.chat_list import ChatList
from chatlm.ui.chat_view import (
    ANSWERING,
    API,
    FOLLOWED,
    IDLE,
    STARTED,
    Outputs,
    answered,
    drawn,
    idle,
)

POLL_S = 0.08
"""How often a page following an answer looks for new text (tokens are shown in batches)."""
STILL_ANSWERING = ("An answer is still being written in this chat: your message stays in the box. "
                   "Send it when the answer ends, or press Stop.")
NOTHING_TO_STOP = "Nothing to stop: no answer is being written in this chat."
WATCH_S = 2.0
log = logging.getLogger(__name__)
NOTHING = FOLLOWED()
"""The outputs of ``follow`` left as they are."""


class ChatUI(ChatList):
    """Builds the Blocks and holds the handlers; handlers are functions of their inputs plus the
    answers being written and the conversation each page shows (``answers``)."""

    # ---- answers being written -----------------------------------------------------------
    def _last_id(self, actor: Actor, conv_id: int) -> int | None:
        rows = self.service.history(actor, conv_id)
        return rows[-1][0].id if rows else None

    def _turn(self, text: str, conv_id: int | None, sys_prompt: str, settings: dict[str, Any],
              request: gr.Request | None) -> Turn:
        """Store the message and start its answer, or say why not. A refused first message leaves
        no conversation behind; a later one the service stored before refusing stays, for Retry."""
        actor = self._actor(request)
        created = conv_id is None
        if conv_id is None:
            conv_id = self.service.new_conversation(actor, system_prompt=sys_prompt,
                                                    settings=settings).id
        if self.answers.busy(conv_id):
            return Turn(conv_id, notice=STILL_ANSWERING, stored=False)
        before = None if created else self._last_id(actor, conv_id)
        try:
            if not created:
                self.service.update_settings(actor, conv_id, system_prompt=sys_prompt, settings=settings)
            with self.answers.storing:
                pump = self.answers.start(conv_id, lambda: self.service.send(
                    actor, conv_id, text, sampling_params(settings), adapter=settings.get("model")))
        except ChatLMError as exc:
            if created:
                self.service.discard(actor, conv_id)
                return Turn(None, notice=f"{exc.message} Your message was not saved.", stored=False)
            if self._last_id(actor, conv_id) == before:
                return Turn(conv_id, notice=exc.message, stored=False)
            return Turn(conv_id, notice=f"{exc.message} Your message is saved without an answer: "
                                        "press Retry to get one.")
        if pump is None:
            return Turn(conv_id, notice=STILL_ANSWERING, stored=False)
        self.answers.show(request.session_hash if request else None, conv_id)
        return Turn(conv_id, pump)

    def _again(self, conv_id: int | None, start: Callable[[Actor], Reply],
               request: gr.Request | None) -> Turn:
        """Retry or edit: a new answer in the shown conversation (one at a time)."""
        if conv_id is None:
            return Turn(None, notice="There is no answer to retry.", stored=False)
        actor = self._actor(request)
        try:
            self.service.conversation(actor, conv_id)  # someone else's chat is refused before anything
            with self.answers.storing:
                pump = self.answers.start(conv_id, lambda: start(actor))
        except ChatLMError as exc:
            return Turn(conv_id, notice=exc.message, stored=False)
        if pump is None:
            return Turn(conv_id, notice=STILL_ANSWERING, stored=False)
        self.answers.show(request.session_hash if request else None, conv_id)
        return Turn(conv_id, pump)

    @staticmethod
    def _at_end(last: Callable[..., Reply], conv_id: int | None, temperature: float, top_p: float,
                max_new: int, model: str | None) -> Callable[[Actor], Reply]:
        """Retry or Continue at the chat's end (``last``: ``retry_last`` or ``continue_last``),
        with the page's settings."""
        params = sampling_params(settings_of(temperature, top_p, max_new))
        return lambda actor: last(actor, conv_id or 0, params, adapter=model)

    def _started(self, turn: Turn, box: Any, request: gr.Request | None) -> tuple[dict[str, Any], bool]:
        """The stored state right after sending (``API``, by name): the message (or why not) and
        its place; and whether the chat had an answer before this start."""
        if turn.notice:
            gr.Warning(turn.notice)
        actor = self._actor(request)
        messages, ids, feedback = self._view(actor, turn.conv_id)
        had_answer = answered(messages)
        if turn.pump is not None:
            messages, ids, feedback = self._question(turn.pump, messages, ids, feedback)
            messages.append({"role": "assistant", "content": ""})
        notice = self.answers.progress(turn.pump) if turn.pump is not None else turn.notice
        return dict(chat=drawn(messages, feedback), ids=ids, conv_id=turn.conv_id,
                    list=self._sidebar(actor, turn.conv_id, request), notice=notice, box=box), had_answer

    def _begun(self, turn: Turn, box: Any, request: gr.Request | None) -> Outputs:
        """The browser's outputs of a start: as ``_started``, and Send turns into Stop (a refused
        message: nothing runs, and Retry is offered if the chat has an answer)."""
        started, had_answer = self._started(turn, box, request)
        return STARTED(**started, **(ANSWERING if turn.pump is not None else idle(had_answer)))

    async def _stream(self, turn: Turn, box: Any, request: gr.Request | None
                      ) -> AsyncIterator[Outputs]:
        """An endpoint's outputs: the start, then the answer until it is stored."""
        yield API(**(await anyio.to_thread.run_sync(self._started, turn, box, request))[0])
        async for out in self._follow(turn.conv_id, turn.pump, request):
            if out is not None:  # a script that opened another chat still gets this answer
                yield API(**out, conv_id=turn.conv_id)

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
                      ) -> AsyncIterator[dict[str, Any] | None]:
        """The chat and its notice by name (and ids and the list once stored) while this page shows
        the conversation whose answer ``pump`` writes, then its stored state once; None once the
        page looks away (an event that ends repeats its last output, which must not be the chat the
        page left)."""
        if pump is None:
            return
        pump.followed = True
        actor = await anyio.to_thread.run_sync(self._actor, request)
        page = self.answers.page(request.session_hash if request else None, conv_id)
        messages, _, _ = self._question(pump, *await anyio.to_thread.run_sync(self._view, actor, conv_id))
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
                    yield dict(chat=gr.update(value=chat), notice=now[1])
            await asyncio.sleep(POLL_S)
        messages, ids, feedback = await anyio.to_thread.run_sync(self._view, actor, conv_id)
        listed = await anyio.to_thread.run_sync(self._sidebar, actor, conv_id, request)
        async with page.drawing():
            yield (dict(chat=drawn(messages, feedback), ids=ids, list=listed, notice=pump.outcome())
                   if page.conv_id == conv_id else None)

    def submit(self, text: str, conv_id: int | None, sys_prompt: str, temperature: float,
               top_p: float, max_new: int, model: str | None, request: gr.Request) -> Outputs:
        """Send or Enter: store the message and start its answer, clearing the box at once (the
        answer is followed by ``follow``); a refused message stays in the box."""
        if not text or not text.strip():
            gr.Warning("Type a message first.")
            return STARTED()
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
        start = self._at_end(self.service.retry_last, conv_id, temperature, top_p, max_new, model)
        turn = self._again(conv_id, start, request)
        return self._begun(turn, gr.update(), request)

    async def retry(self, conv_id: int | None, temperature: float, top_p: float, max_new: int,
                    model: str | None, request: gr.Request) -> AsyncIterator[Outputs]:
        """The ``/retry`` endpoint: a new answer to the last question, streamed."""
        start = self._at_end(self.service.retry_last, conv_id, temperature, top_p, max_new, model)
        async for out in self._again_streamed(conv_id, start, request):  # a generator, so Gradio streams it
            yield out

    def continue_start(self, conv_id: int | None, temperature: float, top_p: float, max_new: int,
                       model: str | None, request: gr.Request) -> Outputs:
        """Continue: go on writing the last answer, as a new alternative (followed by ``follow``)."""
        start = self._at_end(self.service.continue_last, conv_id, temperature, top_p, max_new, model)
        turn = self._again(conv_id, start, request)
        return self._begun(turn, gr.update(), request)

    async def continue_answer(self, conv_id: int | None, temperature: float, top_p: float, max_new: int,
                              model: str | None, request: gr.Request) -> AsyncIterator[Outputs]:
        """The ``/continue`` endpoint: the last answer, cut or stopped, written on, streamed."""
        start = self._at_end(self.service.continue_last, conv_id, temperature, top_p, max_new, model)
        async for out in self._again_streamed(conv_id, start, request):
            yield out

    async def _again_streamed(self, conv_id: int | None, start: Callable[[Actor], Reply],
                              request: gr.Request) -> AsyncIterator[Outputs]:
        turn = await anyio.to_thread.run_sync(self._again, conv_id, start, request)
        async for out in self._stream(turn, gr.update(), request):
            yield out

    def edit(self, conv_id: int | None, ids: list[int], temperature: float, top_p: float,
             max_new: int, model: str | None, request: gr.Request, data: gr.EditData) -> Outputs:
        """An edited user message starts a new branch; the old branch stays (page back to it)."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        if conv_id is None or not 0 <= index < len(ids):
            return STARTED()
        params = sampling_params(settings_of(temperature, top_p, max_new))
        turn = self._again(conv_id, lambda actor: self.service.edit(actor, ids[index], str(data.value),
                                                                   params, adapter=model), request)
        return self._begun(turn, gr.update(), request)

    async def follow(self, conv_id: int | None, request: gr.Request) -> AsyncIterator[Outputs]:
        """Draw the answer being written in the conversation this page shows, until it ends or the
        page opens another one; then Send is back."""
        actor = await anyio.to_thread.run_sync(self._actor, request)
        if conv_id is not None:  # only one's own conversation's answer can be followed
            await anyio.to_thread.run_sync(self.service.conversation, actor, conv_id)
        pump = self.answers.running(conv_id) or self.answers.unseen(conv_id)
        async for out in self._follow(conv_id, pump, request):
            if out is not None:  # still answering until its stored state (with ids) comes
                yield FOLLOWED(**out, **(IDLE if "ids" in out else ANSWERING))
        if pump is None:  # no answer, or it ended before this page came
            messages, ids, feedback = await anyio.to_thread.run_sync(self._view, actor, conv_id)
            async with self.answers.page(request.session_hash if request else None,
                                         conv_id).drawing():
                if conv_id is not None and self._shows(request, conv_id):
                    yield FOLLOWED(chat=drawn(messages, feedback), ids=ids, **idle(answered(messages)))
                elif self._shows(request, conv_id):
                    yield FOLLOWED(**idle(False))
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
        actor = self._actor(request)
        messages, ids, feedback = self._view(actor, conv_id)
        ended = self.answers.last(conv_id)
        return FOLLOWED(chat=drawn(messages, feedback), ids=ids,
                        notice=ended.outcome() if ended is not None else gr.update(), **IDLE)

    def stop(self, conv_id: int | None, request: gr.Request) -> Any:
        """Stop this chat's answer; the notice then says what was kept (``follow`` writes it), or
        that there was nothing to stop (a Stop that came after the end, or from a script)."""
        if conv_id is not None and self.service.stop(self._actor(request), conv_id):
            return gr.update()
        return NOTHING_TO_STOP

    def like(self, ids: list[int], conv_id: int | None, data: gr.LikeData,
             request: gr.Request = None) -> int | None:  # type: ignore[assignment]
        """Save 👍/👎 and select the answer for the rating-details panel. A thumb clicked as soon as
        an answer's text is shown may come before the page holds that answer's id (the answer's last
        update brings it): the ids are then read from the conversation as stored."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        if index >= len(ids) and conv_id is not None:
            ids = self._view(self._actor(request), conv_id)[1]
        if not 0 <= index < len(ids):
            return None
        value = {True: 1, False: -1, "Like": 1, "Dislike": -1}.get(data.liked)  # type: ignore[arg-type]
        try:  # a thumb keeps the reason, comment and better answer written in the details panel
            actor = self._actor(request)
            detail = self.service.rating_detail(actor, ids[index]) if value else None
            extra = {k: detail[k] for k in ("reason", "comment", "better_answer")} if detail else {}
            if extra:  # a reason explains a 👎: it goes when the thumb turns up
                extra["reason"] = reason_for(value, extra["reason"])
            self.service.rate(actor, ids[index], value, **extra)
        except ChatLMError as exc:
            gr.Warning(exc.message)
        return ids[index]

    def switch_alternative(self, conv_id: int | None, ids: list[int], index: int, step: int,
                           request: gr.Request | None = None) -> tuple[Any, ...]:
        """Show the previous or next alternative of the message at ``index`` of those shown (an
        index this page did not show changes nothing); the turns after it follow."""
        actor = self._actor(request)
        if conv_id is not None and 0 <= index < len(ids):
            self.service.switch_sibling(actor, ids[index], step)
        messages, ids, feedback = self._view(actor, conv_id)
        return drawn(messages, feedback), ids

    def paged(self, conv_id: int | None, ids: list[int], event: gr.EventData,
              request: gr.Request) -> tuple[Any, ...]:
        """A click on a message's ‹ or ›."""
        hit = branches.clicked(event)
        if hit is None:
            return gr.update(), ids
        return self.switch_alternative(conv_id, ids, *hit, request)

    def marks(self, conv_id: int | None, ids: list[int], selected: int | None,
              request: gr.Request) -> dict[str, Any]:
        """What the messages carry: ‹ n/m › where a turn has alternatives, and which answer the
        rating form sits under (the one last rated, else the latest)."""
        if conv_id is None or not ids:
            return branches.marks([], None)
        alternatives = self.service.alternatives(self._actor(request), ids)
        return branches.marks(alternatives, ids.index(selected) if selected in ids else None)

    def thumbs(self, conv_id: int | None, request: gr.Request) -> Any:
        """The chat's 👍/👎 as stored (after the rating-details panel changed one)."""
        messages, _, feedback = self._view(self._actor(request), conv_id)
        return drawn(messages, feedback)

    def changed(self, sys_prompt: str, temperature: float, top_p: float, max_new: int) -> tuple[Any, str]:
        """The line at the top of the chat naming the settings that differ from the defaults."""
        said = changed_settings(self.service, sys_prompt, temperature, top_p, max_new)
        return gr.update(visible=bool(said)), ("This chat: " + ", ".join(said) + ".") if said else ""
