"""A new user reads a made-up text in a real browser (issue 23): one chat, default settings, ten
questions (eight the text answers, two it does not), answered by the bundled model with the shipped
reader. Judged on the answer itself (its first line), never on the quoted sentence."""

from __future__ import annotations

import re

import pytest

from chatlm.adapters import SHIPPED_READER
from chatlm.chat.prompts import NOT_FOUND
from tests.browser import click_and_wait, needs_browser, open_app, send

needs_browser()

pytestmark = pytest.mark.slow

LIGHTHOUSE = (
    "The Harrowgate lighthouse stands on Gull Point, at the northern end of Tamsin Bay. It was built in "
    "1871 by the engineer Oswin Pell. Its lamp burned whale oil until 1902, when it was converted to "
    "kerosene. The tower is 34 metres tall and is painted with red and white bands. The first keeper was "
    "Martha Crane, who kept the light for twenty-six years. Today the lighthouse is run by the Tamsin Bay "
    "Heritage Trust, and visitors can climb its 212 steps on weekends. The nearest town is Port Ellery, "
    "four kilometres to the south.")
QUESTIONS = [
    ("Who built the Harrowgate lighthouse?", "Oswin Pell"),
    ("When was the lighthouse built?", "1871"),
    ("Where does the lighthouse stand?", "Gull Point"),
    ("What did the lamp burn until 1902?", "whale oil"),
    ("How tall is the tower?", "34 metres"),
    ("Who was the first keeper of the light?", "Martha Crane"),
    ("How many steps does the lighthouse have?", "212"),
    ("What is the nearest town?", "Port Ellery"),
    ("Who made the lighthouse's glass lens?", None),
    ("How much does a ticket to climb the tower cost?", None),
]
MIN_RIGHT = 6
"""Measured 6 Dec 2026: 6 of 10 (every decline right, 3 of 8 facts declined by the agreement cut).
The issue's target is 9: not met (README, "The reader"); this floor keeps it from getting worse."""


@pytest.fixture
def server(start_server, bundled):
    """The app as a fresh install runs it: the bundled model (a copy: the reader's LoRA layers must
    not wrap the session's shared model) with the shipped reader."""
    import copy
    import dataclasses

    from chatlm.engine.local import LocalBackend

    backend = LocalBackend(dataclasses.replace(bundled, model=copy.deepcopy(bundled.model)))
    try:
        yield start_server(backend, reader="auto")
    finally:
        backend.close()


def load_text(page) -> None:
    """Paste the made-up text into the chat's Knowledge panel and load it."""
    if not page.locator("#load-doc").is_visible():
        page.click("#knowledge .label-wrap")
        page.locator("#load-doc").wait_for(state="visible")
    page.fill("#paste textarea", LIGHTHOUSE)
    page.fill("#paste-name textarea", "harrowgate")
    click_and_wait(page, "#load-doc")
    page.locator("#doc-status", has_text="Loaded").wait_for()


def right(answer: str, expected: str | None) -> bool:
    """The answer's own line: the expected phrase for a fact, the decline for the rest."""
    first = answer.strip().split("\n", 1)[0]
    if expected is None:
        return first.startswith(NOT_FOUND)
    said = re.sub(r"\s*\[\d+\]\s*$", "", first).lower()
    return not first.startswith(NOT_FOUND) and expected.lower() in said and len(said) <= 3 * len(expected)


@pytest.mark.skipif(not SHIPPED_READER.is_dir(), reason="no shipped reader")
def test_a_new_user_asks_ten_questions_about_a_made_up_text(page, server):
    assert server.app.service.adapters.reader == "reader"
    open_app(page, server)
    load_text(page)
    results = []
    for question, expected in QUESTIONS:
        answer = send(page, server, question)
        results.append((question, expected, answer.content.split("\n", 1)[0], right(answer.content, expected)))
        assert answer.adapter == "reader"
    report = "\n".join(f"{'ok ' if ok else 'BAD'} {q} -> {a!r} (want {e!r})" for q, e, a, ok in results)
    print(report)
    assert sum(ok for *_, ok in results) >= MIN_RIGHT, report
