"""Many visitors at once through ``gradio_client``: each is told at once that the message is stored
(and where it stands) or that the server is busy, nobody waits unbounded, and what a visitor was
told is what the database holds."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.test_ui_client import chat_texts, value

gradio_client = pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow

VISITORS = 24
STEP_S = 0.75
"""Seconds per decoding step: a slow model, so that 8 tokens hold a batch slot for ~6 s."""
AT_ONCE = ("A visitor hears that the message is stored (or that the server is busy) before any "
           "answer has ended: had anyone waited for a batch slot, the first words would come only "
           "after an answer freed one (8 slowed steps, over 6 s). An order, not a time: a loaded "
           "machine slows both sides.")
BOUND_S = 90.0


@pytest.fixture
def slow_server(start_server, tiny_backend):
    """The tiny model behind a batch of 4 and a wait queue of 4, each step slowed down."""
    scheduler = tiny_backend.scheduler
    step = scheduler._decode_step

    def slow_step() -> None:
        time.sleep(STEP_S)
        step()

    scheduler._decode_step = slow_step
    admitted: list[Any] = []
    chat = tiny_backend.chat

    def counted(*args: Any, **kwargs: Any) -> Any:  # every request the engine took (a refusal raises)
        gen = chat(*args, **kwargs)
        admitted.append(gen)
        return gen

    tiny_backend.chat = counted
    server = start_server(tiny_backend, max_batch=4, queue_size=4)
    server.server.config.timeout_graceful_shutdown = 1
    server.admitted = admitted
    return server


def most_at_once(gens: list[Any]) -> int:
    """The most requests the engine held at one time (running or waiting), from their own clocks."""
    edges = sorted([(g.submitted_at, 1) for g in gens] + [(g.finished_at, -1) for g in gens])
    held = peak = 0
    for _, step in edges:  # at a tie an end comes first (-1 sorts before 1)
        held += step
        peak = max(peak, held)
    return peak


def test_simultaneous_visitors_hear_at_once_and_what_they_hear_is_stored(slow_server):
    clients = [gradio_client.Client(slow_server.url, verbose=False) for _ in range(VISITORS)]
    jobs: list[Any] = [None] * VISITORS
    go = threading.Barrier(VISITORS)

    def visit(i: int) -> None:
        go.wait()
        jobs[i] = clients[i].submit(text=f"visitor {i} says hello", temperature=0, max_new=8,
                                    api_name="/send")

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(VISITORS)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first: dict[int, tuple[float, Any]] = {}
    ended: dict[int, float] = {}
    try:
        while time.monotonic() - start < BOUND_S and not all(job.done() for job in jobs):
            for i, job in enumerate(jobs):
                outputs = job.outputs()
                if outputs and i not in first:
                    first[i] = (time.monotonic() - start, outputs[0])
                if job.done() and i not in ended:
                    ended[i] = time.monotonic() - start
            time.sleep(0.02)
        finals = [job.result(timeout=1) for job in jobs]
        for i, job in enumerate(jobs):
            first.setdefault(i, (time.monotonic() - start, job.outputs()[0]))
    finally:
        for c in clients:
            c.close()

    first_answer = min((t for i, t in ended.items() if "busy" not in str(value(finals[i][2])).lower()),
                       default=BOUND_S)
    late = {i: round(t, 1) for i, (t, _) in first.items() if t >= first_answer}
    assert not late, (f"visitors heard nothing until an answer had ended ({first_answer:.1f} s): {late}; "
                      + AT_ONCE)
    service = slow_server.app.service
    stored = {m.content for c in service.conversations(service.actor())
              for m, _ in service.history(service.actor(), c.id) if m.role == "user"}
    answered, busy = [], []
    for i, (chat, _sidebar, notice, box) in enumerate(finals):
        text = f"visitor {i} says hello"
        _, (chat0, _s, notice0, _b) = first[i]
        if "busy" in value(notice).lower():
            busy.append(i)
            assert text not in stored, f"visitor {i} was told busy, yet the message is stored"
            assert chat_texts(chat) == [] and value(box) == text  # nothing shown; text kept
        else:
            answered.append(i)
            # heard at once: told the message is saved, or shown it with its answer begun (the tiny
            # random model's first token may be blank, which the chat shows as an empty bubble)
            assert "Your message is saved" in value(notice0) or [r for r, _ in chat_texts(chat0)] == [
                "user", "assistant"], value(notice0)
            assert chat_texts(chat0)[0] == ("user", text)  # stored at once, shown at once
            assert text in stored
            assert [r for r, _ in chat_texts(chat)] == ["user", "assistant"]
            assert chat_texts(chat)[1][1], f"visitor {i} got an empty answer"
    assert answered and busy, (answered, busy)
    # never more than the batch and the wait queue at once (more may be answered in all: a visitor
    # whose request reached the server after an answer ended takes the freed place)
    assert len(slow_server.admitted) == len(answered)
    assert most_at_once(slow_server.admitted) <= 4 + 4
    # nobody else left anything behind (no empty "New chat" for a refused visitor)
    assert len(service.conversations(service.actor())) == len(answered)
