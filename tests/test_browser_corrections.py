"""The loop a user sees (issue 24), in a real browser with the bundled model and the shipped reader:
load a made-up text, ask about it, like the right answers and dislike the wrong ones with the
right answer written in; one round from the Training tab, Promote (a second press if the round is
worse); the chat's model picker names the new adapter without a reload; in a new chat the same
questions get the corrections the user wrote."""

from __future__ import annotations

import pytest

from chatlm.adapters import SHIPPED_READER
from chatlm.chat.prompts import NOT_FOUND
from tests.browser import choose, click_and_wait, dislike_last, needs_browser, open_app, send, wait_for
from tests.test_browser_reader import QUESTIONS, load_text, right

needs_browser()

pytestmark = pytest.mark.slow
ROUND_TIMEOUT = 900.0
"""A round on ten ratings of the bundled model (about 40 steps) on a busy 2-core machine."""


@pytest.fixture
def server(start_server, bundled, tmp_path):
    """A fresh install: the bundled model (a copy: the reader's and the round's LoRA layers must not
    wrap the session's shared model) with the shipped reader; rounds run in their own process."""
    import copy
    import dataclasses

    from chatlm.engine.local import LocalBackend

    backend = LocalBackend(dataclasses.replace(bundled, model=copy.deepcopy(bundled.model)))
    try:
        yield start_server(backend, reader="auto", data_dir=tmp_path / "data")
    finally:
        backend.close()


def rate(page, *, good: bool, better: str | None = None) -> None:
    """👍 the last answer, or 👎 it and write the better answer in the form it opens."""
    page.locator("#chatbot button[aria-label^='Like' i]").last.wait_for()
    if good:
        page.locator("#chatbot button[aria-label='Like']").last.click()
        page.locator("#chatbot button[aria-label='Liked']").last.wait_for()
        return
    dislike_last(page)
    page.locator("#rate-save").wait_for(state="visible")
    page.fill("#rate-better textarea", better or "")
    click_and_wait(page, "#rate-save")
    page.locator("#rate-result", has_text="Saved.").wait_for()


def trained_questions(server, questions) -> set[str]:
    """Those of ``questions`` the round trained on: the rest fell in the held-out split that judges
    it (the same split the round made: ``chatlm.training.data.split``)."""
    from chatlm.feedback import load
    from chatlm.store.db import transaction
    from chatlm.training import data

    with transaction(server.app.service.sessions) as s:
        train, _ = data.split(load.rated_answers(s, guests=False))
    prompts = [a.prompt[-1][1] for a in train]
    return {q for q in questions if any(q in p for p in prompts)}


@pytest.mark.skipif(not SHIPPED_READER.is_dir(), reason="no shipped reader")
def test_what_a_user_corrects_the_promoted_adapter_answers(page, server) -> None:
    from chatlm.store import registry
    from chatlm.store.db import transaction

    open_app(page, server)
    load_text(page)
    corrected: dict[str, str] = {}
    for question, expected in QUESTIONS:
        answer = send(page, server, question)
        if right(answer.content, expected):
            rate(page, good=True)
        else:
            corrected[question] = expected or NOT_FOUND
            rate(page, good=False, better=expected or NOT_FOUND)
    assert corrected, "every answer was right already: nothing to correct"

    # one round from the Training tab, as a user starts it
    click_and_wait(page, "button[role=tab]:has-text('Training')")
    page.locator("#tr-start").wait_for()
    wait_for(lambda: page.locator("#tr-start").is_enabled(), "Start to be enabled by the ratings")
    assert "learn to give the liked answers and your corrections (SFT)" in page.locator("#tr-data").inner_text()
    click_and_wait(page, "#tr-start")
    status = lambda: page.locator("#tr-status").inner_text()  # noqa: E731
    wait_for(lambda: "succeeded" in status() or "failed" in status(), "the round to end", timeout=ROUND_TIMEOUT)
    assert "Round 1 succeeded: adapter chatlm-v1 (sft)" in status(), status()
    with transaction(server.app.service.sessions) as s:
        adapter = registry.get_adapter(s, name="chatlm-v1")
        assert adapter.parent == "reader"  # a round on answers about a text continues from the reader
    verdict = page.locator("#tr-verdict").inner_text()
    assert "of your" in verdict and "corrections as you wrote them" in verdict, verdict

    # Promote (a worse round asks for a second press, saying what gets worse)
    choose(page, "tr-target", "chatlm-v1")
    changed = lambda: page.locator("#tr-changed").inner_text()  # noqa: E731
    page.click("#tr-promote")  # the tab's own words say when it is done (the picker's update follows it)
    said = wait_for(lambda: ("Not promoted yet" in changed() or "Promoted" in changed()) and changed(), "Promote")
    if "Not promoted yet" in said:
        assert "Press Promote again" in said
        page.click("#tr-promote")
    wait_for(lambda: "new chats use chatlm-v1" in changed(), "the promotion")

    # the chat's picker follows without a reload; a new chat asks the corrected questions again
    page.click("button[role=tab]:has-text('Chat')")
    wait_for(lambda: "Default (chatlm-v1)" in page.locator("#model input").input_value(), "the picker", timeout=10)
    click_and_wait(page, "#new-chat")
    load_text(page)
    trained = trained_questions(server, corrected)
    assert trained, f"every correction was held out: {corrected}"
    results = []
    for question in trained:
        answer = send(page, server, question)
        assert answer.adapter == "chatlm-v1"
        results.append((question, corrected[question], answer.content.split("\n", 1)[0],
                        right(answer.content, None if corrected[question] == NOT_FOUND else corrected[question])))
    report = "\n".join(f"{'ok ' if ok else 'BAD'} {q} -> {a!r} (wrote {w!r})" for q, w, a, ok in results)
    print(report)
    assert sum(ok for *_, ok in results) >= 0.8 * len(results), report
