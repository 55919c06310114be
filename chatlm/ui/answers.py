"""Answers being written, apart from the Gradio events that show them.

An answer is read by a ``Pump`` thread, not by the event that asked for it: events only follow
it. So a page that opens another conversation stops drawing it (the answer goes on and is stored),
a page that comes back, or is reloaded, follows it again, and a stream never holds a Gradio worker.
``Answers`` keeps one pump per conversation (a second message waits for the first answer) and the
conversation each page shows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from chatlm.chat.reply import Reply

log = logging.getLogger(__name__)
SWITCH_WAIT_S = 1.0
"""How long opening another chat waits for a follower's update in flight (one that is never
taken up by Gradio, its page gone, must not block the page for ever)."""
SESSIONS = 10_000
"""Pages whose shown conversation is remembered (the oldest is forgotten first)."""
STORING = 4
"""Turns stored at once (a few milliseconds each): a crowd of senders must not take every pooled
database connection (``send`` used to hold two at once, and 15 senders then waited on each other
until the pool timed out)."""
LONG_PROMPT = 1000
"""Prompt tokens from which a page says how far the model has read (seconds on a CPU)."""


class Pump:
    """Reads one answer on its own thread; pages follow ``text`` until ``done``."""

    def __init__(self) -> None:
        self.reply: Reply | None = None
        self.text = ""
        self.place = 0
        """Its place in the backend's wait queue when submitted (0: not waiting, or unknown)."""
        self.done = threading.Event()
        self.followed = False
        """A page has followed it (an answer that ended before its page's follow event came is
        drawn once, with its outcome, by that event: see ``Answers.unseen``)."""

    def _run(self, on_done: Callable[[Pump], None]) -> None:
        try:
            for delta in self.reply or ():
                self.text += delta
        except Exception:  # the Reply stores what it can; a page must still see the end
            log.exception("reading an answer failed")
        finally:
            self.done.set()
            on_done(self)

    def outcome(self) -> str:
        """The notice once the answer ended (context dropped, stopped, failed)."""
        if self.reply is None:
            return ""
        notice, gen = self.reply.notice, self.reply.generation
        if gen.finish_reason == "error":
            return f"The answer failed: {gen.error}"
        if gen.finish_reason == "cancelled":
            return (notice + " " if notice else "") + "Stopped; the partial answer was kept."
        if gen.finish_reason == "length":
            return (notice + " " if notice else "") + (
                f"The answer was cut at the limit of {gen.params.max_new_tokens} new tokens: press "
                "**Continue** to go on, or raise *Maximum new tokens* and Retry.")
        return notice


@dataclass
class Turn:
    """What sending (or retrying) did: the conversation now shown, the answer started (None when
    refused), the notice, and whether the typed text was stored (else it stays in the box)."""

    conv_id: int | None
    pump: Pump | None = None
    notice: str = ""
    stored: bool = True


@dataclass
class Page:
    """The conversation one page shows. A follower holds ``lock`` from checking it until Gradio
    has queued the update and asks for the next one, and a page switching chats takes it to
    change ``conv_id``: so no update of the chat it left can reach the page after the new chat."""

    conv_id: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    query: str = ""
    """What this page's sidebar search box holds: every redraw of its list keeps to it."""
    tz: str = ""
    """The browser's time zone name (the sidebar's date groups follow its calendar)."""

    @asynccontextmanager
    async def drawing(self) -> AsyncIterator[None]:
        """Hold the page for one update (polled: blocking here would stop the event loop). Like
        ``Answers.show``, it waits at most ``SWITCH_WAIT_S``: a follower whose update Gradio never
        took up (its page gone) must not leave this page's next answer undrawn."""
        deadline = time.monotonic() + SWITCH_WAIT_S
        held = self.lock.acquire(blocking=False)
        while not held and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
            held = self.lock.acquire(blocking=False)
        try:
            yield
        finally:
            if held:
                self.lock.release()


class Answers:
    """The answer being written in each conversation, and the conversation each page shows."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._pumps: dict[int, Pump] = {}
        self._ended: dict[int, Pump] = {}
        self._pages: dict[str, Page] = {}
        self._lock = threading.Lock()
        self.storing = threading.BoundedSemaphore(STORING)

    def running(self, conv_id: int | None) -> Pump | None:
        """The pump of the answer being written in this conversation (a finished one until its
        thread lets go), if any."""
        return self._pumps.get(conv_id) if conv_id is not None else None

    def unseen(self, conv_id: int | None) -> Pump | None:
        """This conversation's last answer if it ended before any page followed it (a quick
        answer, or a busy machine): its page's follow event then draws its end and its notice."""
        pump = self._ended.get(conv_id) if conv_id is not None else None
        return pump if pump is not None and not pump.followed else None

    def last(self, conv_id: int | None) -> Pump | None:
        """This conversation's last answer that ended (kept for a while: ``SESSIONS`` of them)."""
        return self._ended.get(conv_id) if conv_id is not None else None

    def busy(self, conv_id: int | None) -> bool:
        pump = self.running(conv_id)
        return pump is not None and not pump.done.is_set()

    def start(self, conv_id: int, reply: Callable[[], Reply]) -> Pump | None:
        """Start ``reply()`` as this conversation's answer; None while it already has one running
        (nothing is started). A refusal of the service is raised, nothing left claimed."""
        with self._lock:
            if self.busy(conv_id):
                return None
            pump = self._pumps[conv_id] = Pump()
        try:
            pump.reply = reply()
        except BaseException:
            self._release(conv_id, pump)
            pump.done.set()
            raise
        pump.place = self.waiting()
        threading.Thread(target=pump._run, args=(lambda p: self._ended_now(conv_id, p),), daemon=True,
                         name=f"answer-{conv_id}").start()
        return pump

    def _ended_now(self, conv_id: int, pump: Pump) -> None:
        with self._lock:
            self._ended.pop(conv_id, None)
            self._ended[conv_id] = pump
            if len(self._ended) > SESSIONS:
                del self._ended[next(iter(self._ended))]
        self._release(conv_id, pump)

    def _release(self, conv_id: int, pump: Pump) -> None:
        with self._lock:
            if self._pumps.get(conv_id) is pump:
                del self._pumps[conv_id]

    def waiting(self) -> int:
        """Answers waiting for a batch slot in the local scheduler (0 for a remote backend)."""
        return self.backend.waiting()

    def progress(self, pump: Pump) -> str:
        """What an answer that has no text yet is doing, for the notice."""
        if pump.text:
            return pump.reply.notice if pump.reply is not None else ""
        place = min(pump.place, self.waiting())
        if place:
            return f"Your message is saved; the answer waits for a free slot (number {place} in line)."
        gen = getattr(pump.reply, "generation", None)
        total = int(getattr(gen, "prompt_tokens", 0) or 0)
        if total >= LONG_PROMPT:
            read = int(getattr(gen, "prefilled", 0) or 0)
            return (f"Your message is saved. It is long: the model reads it (with the conversation "
                    f"before it) before answering, {read:,} of {total:,} tokens read…")
        return "Your message is saved; the answer is starting…"

    def page(self, session: str | None, conv_id: int | None = None) -> Page:
        """This page's record (for a caller without a session, one that shows ``conv_id``)."""
        if session is None:
            return Page(conv_id)
        with self._lock:
            page = self._pages.pop(session, None) or Page()
            self._pages[session] = page
            if len(self._pages) > SESSIONS:
                del self._pages[next(iter(self._pages))]
            return page

    def show(self, session: str | None, conv_id: int | None) -> None:
        """Remember what this page shows, after any update in flight of the chat it showed."""
        page = self.page(session)
        held = page.lock.acquire(timeout=SWITCH_WAIT_S)
        try:
            page.conv_id = conv_id
        finally:
            if held:
                page.lock.release()
