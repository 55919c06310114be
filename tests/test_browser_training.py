"""The Training tab in a real browser (Playwright + Debian's chromium): from stored ratings to a
promoted adapter and back. The server runs a tiny random model (a round takes seconds), and the
round itself runs in its own worker process as it does for a user; what the page shows is checked
against the database and against the model's own greedy answers.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest

from tests.browser import (
    all_messages,
    answers,
    choose,
    click_and_wait,
    local_actor,
    needs_browser,
    open_app,
    settled,
    table_rows,
    wait_for,
)
from tests.seeding import seed_pairs

needs_browser()

from chatlm.engine.local import LocalBackend  # noqa: E402
from chatlm.engine.params import SamplingParams  # noqa: E402
from chatlm.evaluation.verdict import judge  # noqa: E402
from chatlm.store import registry  # noqa: E402
from chatlm.store.db import transaction  # noqa: E402

COMPARE = SamplingParams(temperature=0.0, max_new_tokens=256)
"""What Compare asks with here: greedy, with the token limit of the chat this test sent from."""

pytestmark = pytest.mark.slow
ROUND_TIMEOUT = 300.0
"""Seconds a two-step round on the tiny model may take on a busy 2-core machine."""


@pytest.fixture
def server(start_server, tiny, tiny_dir, tmp_path):
    """The app over its own copy of the tiny model (serving an adapter wraps it); the round's worker
    loads the same weights from ``tiny_dir``."""
    backend = LocalBackend(dataclasses.replace(tiny, model=copy.deepcopy(tiny.model)), max_batch=4)
    yield start_server(backend, data_dir=tmp_path / "data", model=str(tiny_dir), device="cpu")
    backend.close()


def text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id}").inner_text().strip()


def open_training(page) -> None:
    click_and_wait(page, "button[role=tab]:has-text('Training')")


def active_in_registry(server) -> str | None:
    with transaction(server.app.service.sessions) as s:
        active = registry.active_adapter(s)
        return active.name if active else None


def service_contribution(server):
    from chatlm.feedback.reports import FeedbackService

    actor = server.app.identity.local()
    return FeedbackService(server.app.service.sessions).contribution(actor)


def test_ratings_to_a_promoted_adapter_and_back(page, server) -> None:
    service = server.app.service
    open_app(page, server)
    open_training(page)
    # too little data: said before and on Start, and nothing starts
    # the tab's first refresh may still be showing Gradio's progress timer: wait for its text
    wait_for(lambda: "Not enough feedback to train. DPO needs 8 preference pairs" in text(page, "tr-data"),
             "the data summary")
    # Start, Promote and Roll back are disabled until they can act; no empty loss plot is drawn
    assert page.locator("#tr-start").is_disabled()
    assert page.locator("#tr-promote").is_disabled() and page.locator("#tr-rollback").is_disabled()
    assert not page.locator("#tr-loss").is_visible()
    assert not page.locator("#tr-max-steps input").is_visible()  # advanced options are folded
    assert "No training round yet" in text(page, "tr-status")

    seed_pairs(service.sessions, local_actor(server).user_id, 12)
    page.click("button[role=tab]:has-text('Chat')")  # no event: nothing to wait for
    open_training(page)
    assert "A round would learn to prefer the better answer of each pair (DPO)" in text(page, "tr-data")
    assert "It takes roughly 1 minute (a first guess" in text(page, "tr-data")  # no round here yet
    given = service_contribution(server)  # the sentence the Feedback tab shows, the same counts
    assert given.pairs == 12 and given.sentence().replace("**", "") in text(page, "tr-data")
    wait_for(lambda: page.locator("#tr-start").is_enabled(), "Start to be enabled by the data")
    page.click("#tr-advanced .label-wrap")
    steps = page.locator("#tr-max-steps input")

    def typed() -> bool:  # the number is taken on leaving the box (a loaded full run once started with 0)
        steps.fill("2")
        steps.press("Tab")
        settled(page)
        return steps.input_value() == "2"

    # a full run once read "0" back after the first try (a redraw that the test has not pinned down)
    wait_for(typed, "the maximum steps to hold 2")
    click_and_wait(page, "#tr-start")
    assert "started in its own process" in text(page, "tr-started")
    # the timer follows the round to its end; the tab then shows the new adapter's evaluation
    wait_for(lambda: "succeeded" in text(page, "tr-status") or "failed" in text(page, "tr-status"),
             "the round to end", timeout=ROUND_TIMEOUT)
    status = text(page, "tr-status")
    assert "Round 1 succeeded: adapter chatlm-v1 (dpo)" in status, status
    with transaction(service.sessions) as s:
        run = registry.get_run(s, run_id=1)
        adapter = registry.get_adapter(s, name="chatlm-v1")
        metrics = adapter.metrics
    assert [p[0] for p in run.progress["loss"]] == [1, 2]
    page.locator("#tr-loss canvas, #tr-loss svg").first.wait_for()  # the loss plot, shown once it has points

    def ticks() -> list[str]:  # the x labels before "step" (then y labels, "loss")
        texts = page.locator("#tr-loss svg text").all_text_contents()
        return [t for t in texts[:texts.index("step")] if t.replace(".", "").isdigit()] if "step" in texts else []

    # whole steps on the x axis (they were 0.2 apart), both of them: a CI run kept the plot drawn mid-round
    # (a sort list sent with each step made the chart redraw itself, and the older drawing won)
    wait_for(lambda: ticks() == ["1", "2"], "the loss plot to tick steps 1 and 2")
    assert table_rows(page, "tr-runs")[0][:4] == ["1", "succeeded", "dpo", "chatlm-v1"]
    adapters = table_rows(page, "tr-adapters")
    verdict = judge(metrics)  # the tab says what the registry's one definition says
    assert adapters[0][:3] == ["", "chatlm-v1", "dpo"]
    assert adapters[0][5] == (f"{verdict.label} than base model" if verdict.label in ("better", "worse")
                              else verdict.label)
    assert verdict.headline() in text(page, "tr-verdict")
    evaluation = table_rows(page, "tr-eval")
    margin = next(r for r in evaluation if r[0].startswith("how much more likely it finds the better answer"))
    assert "← judged on" in margin[0]
    assert float(margin[1]) == pytest.approx(metrics["adapter"]["pair_margin"], rel=1e-3)
    assert float(margin[2]) == pytest.approx(metrics["baseline"]["pair_margin"], rel=1e-3)
    assert service.adapters.active is None  # a new adapter is not served until promoted

    # promote: registry and server change at once, and the next chat answer uses it
    choose(page, "tr-target", "chatlm-v1")
    page.click("#tr-promote")  # the tab's own words say when it is done (the picker's update follows it)
    if verdict.is_worse:  # a worse round: the tab says what gets worse, and a second press promotes
        wait_for(lambda: "Press Promote again" in text(page, "tr-changed"), "the tab to ask again")
        assert "Not promoted yet" in text(page, "tr-changed") and active_in_registry(server) is None
        page.click("#tr-promote")
    wait_for(lambda: "new chats use chatlm-v1" in text(page, "tr-changed"), "the promotion")
    settled(page)
    assert "New chats use: chatlm-v1" in text(page, "tr-active")
    assert active_in_registry(server) == "chatlm-v1" and service.adapters.active == "chatlm-v1"
    assert table_rows(page, "tr-adapters")[0][0] == "✓"
    page.click("button[role=tab]:has-text('Chat')")  # no event: nothing to wait for
    # the chat's model picker names the promoted adapter without a reload
    wait_for(lambda: "Default (chatlm-v1)" in page.locator("#model input").input_value(), "the picker", timeout=10)
    before = len(answers(server))
    page.fill("#message textarea", "Say hi")
    page.click("#send")  # the tiny model's random tokens do not render as typed: read the store
    answer = wait_for(lambda: len(answers(server)) > before and answers(server)[-1], "the answer to be stored")
    assert answer.adapter == "chatlm-v1"

    # side by side on one question: each column is that model's own greedy answer
    open_training(page)
    choose(page, "tr-left", "base model")
    choose(page, "tr-right", "chatlm-v1")
    page.fill("#tr-question textarea", "What is 3 plus 3?")
    stored = len(all_messages(server))
    click_and_wait(page, "#tr-compare")  # the heading (what it asks with), then the two answers
    settled(page)
    messages = [{"role": "system", "content": service.settings.system_prompt},
                {"role": "user", "content": "What is 3 plus 3?"}]
    # the same two requests, started together like the tab's (a batch of two; a random model's
    # near-ties can flip between a batch of one and of two)
    expected = [g.wait() for g in [service.generate(messages, COMPARE, a) for a in (None, "chatlm-v1")]]

    def shown() -> list[str]:
        return [page.locator(f"#{e} textarea").input_value() for e in ("tr-left-answer", "tr-right-answer")]

    wait_for(lambda: shown() == [t.replace("\r\n", "\n") for t in expected], "both answers")  # \n only
    assert all(shown())
    assert len(all_messages(server)) == stored  # a comparison stores no conversation

    # roll back: the base model serves again, and the registry agrees
    click_and_wait(page, "#tr-rollback")
    assert "new chats use base model" in text(page, "tr-changed")
    assert active_in_registry(server) is None and service.adapters.active is None
    assert table_rows(page, "tr-adapters")[0][0] == ""
