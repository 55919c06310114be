"""One request's handle, apart from the scheduler that fills it: what the service, the API and a
remote backend pass around, importable without torch (a shell command that only reads chats must
not pay for torch's import, ~1.5 s)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from chatlm.engine.params import SamplingParams
from chatlm.errors import ChatLMError

_DONE = object()


@dataclass
class Generation:
    """Handle of one request: iterate it for text deltas; ``cancel()`` frees its batch slot."""

    id: int
    prompt_tokens: int
    params: SamplingParams
    adapter: str | None = None
    completion_tokens: int = 0
    text: str = ""
    finish_reason: str | None = None
    """``stop`` (end of turn or stop string), ``length``, ``cancelled`` or ``error``."""
    error: str | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    decline_score: float | None = None
    """For a copied answer with a decline option: log p(the decline's first token) minus log p(any
    span start), read from the first step's unconstrained distribution (a learnt "not in the text")."""
    span_logprob: float | None = None
    """For a copied answer: log p of its first token under the model's unconstrained first-step
    distribution (how sure the model is of the span it starts; a taught answer is near 0)."""
    prefilled: int = 0
    """Prompt tokens read so far (a long prompt is read in chunks: a page shows how far)."""
    _events: queue.Queue[object] = field(default_factory=queue.Queue, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _waker: Callable[[], None] | None = field(default=None, repr=False)
    """Set while an event loop reads the deltas (``deltas``): told of each new event."""

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def __iter__(self) -> Iterator[str]:
        """Yield text deltas until the request ends; a failure raises after the partial text."""
        while True:
            item = self._events.get()
            if item is _DONE:
                if self.finish_reason == "error":
                    raise ChatLMError(self.error or "generation failed")
                return
            yield str(item)

    async def deltas(self) -> AsyncIterator[str]:
        """The deltas for an event loop, with no thread hop per token (``asyncio.to_thread`` per
        delta cost the loop about 3 ms a token, on a core the model's kernels need); what arrived
        while the reader was busy comes as one delta, so a loaded server sends fewer chunks. A
        failure raises after the partial text, as iterating does."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        self._waker = lambda: loop.call_soon_threadsafe(ready.set)
        try:
            while True:
                ready.clear()
                parts, done = [], False
                while not done:
                    try:
                        item = self._events.get_nowait()
                    except queue.Empty:
                        break
                    done = item is _DONE
                    if not done:
                        parts.append(str(item))
                if parts:
                    yield "".join(parts)
                if done:
                    if self.finish_reason == "error":
                        raise ChatLMError(self.error or "generation failed")
                    return
                if not parts:
                    await ready.wait()
        finally:
            self._waker = None

    def _wake(self) -> None:
        waker = self._waker
        if waker is not None:
            try:
                waker()
            except RuntimeError:  # the reader's event loop has closed: nobody is waiting
                self._waker = None

    def wait(self) -> str:
        """Block until done; return the whole text (raises if generation failed)."""
        for _ in self:
            pass
        return self.text

    def wait_quietly(self) -> None:
        """Block until done, ignoring a failure (the caller reads ``error``)."""
        while not self.done:
            self._events.get()

    # called by the scheduler thread only
    def _emit(self, delta: str) -> None:
        if delta:
            self.text += delta
            self._events.put(delta)
            self._wake()

    def _finish(self, reason: str, error: str | None = None) -> None:
        if self.finish_reason is None:
            self.finish_reason, self.error = reason, error
            self.finished_at = time.perf_counter()
            self._events.put(_DONE)
            self._wake()
