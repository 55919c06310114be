"""A stand-in for the model whose answers a test scripts (``ScriptedBackend``): what a page or a
client shows while an answer waits, streams or is refused as busy, without a model's CPU time or
its randomness. The browser tests and tests/test_ui_client.py use it."""

from __future__ import annotations

import time
from typing import Any

from chatlm.engine.backend import Backend


class ScriptedBackend(Backend):
    """A stand-in for the model that answers every prompt with the same pieces of text: a test can
    hold the first piece back (``hold``) and pace the rest (``delay``), so what a page shows while
    an answer waits or streams is checked without a model's CPU time or its randomness.
    ``max_batch``/``queue_size`` bound it like the real scheduler (BusyError when full)."""

    model_id = "scripted"
    context_window = 4096

    def __init__(self, pieces: list[str], *, delay: float = 0.0, max_batch: int = 8,
                 queue_size: int = 32) -> None:
        import threading

        self.pieces = pieces
        self.delay = delay
        self.hold = threading.Event()
        self.hold.set()
        self.max_batch, self.queue_size = max_batch, queue_size
        self.running = 0
        self._lock = threading.Lock()
        self._ids = iter(range(1, 1 << 30))

    def count_tokens(self, messages: Any) -> int:
        return sum(len(m["content"]) // 4 + 4 for m in messages)

    def chat(self, messages: Any, params: Any, *, adapter: str | None = None, continue_final: bool = False) -> Any:
        import threading

        from chatlm.engine.generation import Generation
        from chatlm.errors import BusyError

        with self._lock:
            if self.running >= self.max_batch + self.queue_size:
                raise BusyError("The server is busy; retry shortly.")
            self.running += 1
            gen = Generation(id=next(self._ids), prompt_tokens=self.count_tokens(messages),
                             params=params, adapter=adapter)
        threading.Thread(target=self._run, args=(gen,), daemon=True).start()
        return gen

    def _run(self, gen: Any) -> None:
        try:
            while not self.hold.wait(0.05):
                if gen.cancelled:
                    return gen._finish("cancelled")
            for piece in self.pieces[: gen.params.max_new_tokens]:
                if gen.cancelled:
                    return gen._finish("cancelled")
                gen.completion_tokens += 1
                gen._emit(piece)
                time.sleep(self.delay)
            gen._finish("length" if gen.params.max_new_tokens < len(self.pieces) else "stop")
        finally:
            with self._lock:
                self.running -= 1

    def close(self) -> None:
        self.hold.set()
