"""Feedback in a real browser (Playwright + Debian's chromium) over the real bundled model: rating
an answer in detail, changing and withdrawing it, paging retried answers and rating one of them,
excluding a conversation from training, the Feedback tab and its dataset download, and all of it
surviving a restart. (Editing a message into a new branch: ``tests/test_browser_edits.py``.)

What the user sees is checked in the page; what was stored is read through the running app's
service or straight from its SQLite file, so every test proves both.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin

import pytest

from chatlm.store.repo import RATING_REASONS
from tests.browser import (
    all_messages,
    bot_texts,
    choose,
    click_and_wait,
    detail,
    dislike_last,
    local_actor,
    needs_browser,
    open_app,
    pagers,
    send,
    settings,
    settled,
    shown,
    table_rows,
    turn_page,
    user_texts,
    wait_answer,
    wait_for,
)

needs_browser()

pytestmark = pytest.mark.slow

FRANCE = "What is the capital of France?"
OWLS = "Tell me one fact about owls."


# ---- helpers -----------------------------------------------------------------------------------
def thumbs(page) -> list[str]:
    """The labels of the chat's 👍/👎 buttons: 'Liked'/'Disliked' mark the chosen one."""
    return page.locator("#chatbot button[aria-label^='Like'], #chatbot button[aria-label^='Dislike']"
                        ).evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")


def rating_events(server) -> list[tuple[Any, ...]]:
    """The rating history as stored, read through the running app's SQLAlchemy sessions (a second
    SQLite handle in this process would drop the server's locks when it closes)."""
    from sqlalchemy import select

    from chatlm.store.db import transaction
    from chatlm.store.models import RatingEvent

    with transaction(server.app.service.sessions) as s:
        return [(e.message_id, e.value, e.reason, e.comment, e.better_answer)
                for e in s.scalars(select(RatingEvent).order_by(RatingEvent.id))]


def open_details(page) -> None:
    """Open the details panel unless it is open. A 👎 opens it by itself, so the page settles
    first: a click on the panel's label while that 👎 was in flight closed it again (a full run)."""
    settled(page)
    if not page.locator("#rate-save").is_visible():
        page.click("#rate-details .label-wrap")
        page.locator("#rate-save").wait_for(state="visible")


def rated_value(page) -> list[str]:
    return page.locator("#rate-value input:checked").evaluate_all("els => els.map(e => e.value)")


def save_details(page, *, value: str | None = None, reason: str | None = None,
                 comment: str | None = None, better: str | None = None) -> None:
    """Fill the 'Rate in detail' panel and click Save; wait for 'Saved.'."""
    open_details(page)
    if value is not None:
        page.locator("#rate-value label").filter(has_text=re.compile(rf"^\s*{value}\s*$")).click()
    if reason is not None:  # picked by its words (the stored id is ``reason``)
        page.locator("#rate-reason label", has_text=RATING_REASONS[reason]).click()
    if comment is not None:
        page.fill("#rate-comment textarea", comment)
    if better is not None:
        page.fill("#rate-better textarea", better)
    click_and_wait(page, "#rate-save")
    page.locator("#rate-result", has_text="Saved.").wait_for()


# ---- tests -------------------------------------------------------------------------------------
def test_rating_details_are_saved_changed_and_withdrawn(page, server):
    open_app(page, server)
    settings(page, temperature=0, max_new=8)
    answer = send(page, server, FRANCE)

    # 👎 in the chat opens the details panel by itself, on the answer just rated, with its
    # reasons in plain words.
    dislike_last(page)
    wait_for(lambda: (detail(server, answer.id) or {}).get("value") == -1, "the 👎 to be stored")
    page.locator("#rate-save").wait_for(state="visible")
    wait_for(lambda: rated_value(page) == ["Dislike"], "the panel to show the 👎")
    # the form is drawn in the chat, right under the answer it rates
    form = page.locator("#chatbot #rate-details")
    form.wait_for()
    answer_box = page.locator("#chatbot [data-testid='bot']").last.bounding_box()
    form_box = form.bounding_box()
    assert answer_box and form_box and 0 <= form_box["y"] - (answer_box["y"] + answer_box["height"]) < 80
    reasons = [t.strip() for t in page.locator("#rate-reason label").all_inner_texts()]
    assert reasons == list(RATING_REASONS.values())
    assert "alternative 1 of 1" in page.locator("#rate-title").inner_text()

    save_details(page, reason="wrong", comment="It should name the city only.",
                 better="The capital of France is Paris.")
    assert detail(server, answer.id) == {"value": -1, "reason": "wrong",
                                         "comment": "It should name the city only.",
                                         "better_answer": "The capital of France is Paris."}
    wait_for(lambda: thumbs(page) == ["Disliked", "Like"], "the chat to keep the 👎 after the save")

    # Change it to 👍 in the panel: the 👎 reasons go (hidden, and not stored with a 👍), the
    # comment and better answer stay, and the chat's thumbs follow.
    open_details(page)
    page.locator("#rate-value label").filter(has_text=re.compile(r"^\s*Like\s*$")).click()
    page.locator("#rate-reason").wait_for(state="hidden")
    save_details(page)
    assert detail(server, answer.id) == {"value": 1, "reason": None,
                                         "comment": "It should name the city only.",
                                         "better_answer": "The capital of France is Paris."}
    wait_for(lambda: thumbs(page) == ["Dislike", "Liked"], "the chat to show the 👍")

    # Withdraw: no current rating, an empty panel, no thumb chosen in the chat.
    page.click("#rate-withdraw")
    page.locator("#rate-result", has_text="Rating withdrawn.").wait_for()
    wait_for(lambda: detail(server, answer.id) is None, "the rating to be withdrawn")
    wait_for(lambda: rated_value(page) == [], "the panel to be cleared")
    assert page.locator("#rate-comment textarea").input_value() == ""
    wait_for(lambda: thumbs(page) == ["Dislike", "Like"], "the chat to show no thumb chosen")
    assert server.app.service.history(local_actor(server), answer.conversation_id)[-1][1] is None

    # Every change is in the rating history, the withdrawal included.
    assert rating_events(server) == [
        (answer.id, -1, None, None, None),
        (answer.id, -1, "wrong", "It should name the city only.", "The capital of France is Paris."),
        (answer.id, 1, None, "It should name the city only.", "The capital of France is Paris."),
        (answer.id, None, None, None, None),
    ]

    # A 👍 in the chat after that shows in the panel again (the same answer stays selected).
    page.locator("#chatbot button[aria-label='Like']").click()
    wait_for(lambda: rated_value(page) == ["Like"], "the panel to show the new 👍")
    assert detail(server, answer.id) == {"value": 1, "reason": None, "comment": None,
                                         "better_answer": None}

    # A new chat has no answer to rate: the form goes back under the chat, and keeps working there.
    page.click("#new-chat")
    wait_for(lambda: page.locator("#chatbot #rate-details").count() == 0, "the form to leave the chat")
    assert page.locator("#rate-details").count() == 1


def test_retry_paging_and_a_rating_survive_a_restart(page, start_server, bundled_backend, server):
    service = server.app.service
    open_app(page, server)
    settings(page, temperature=1.2, max_new=8)
    first = send(page, server, "Name a color.")
    settled(page)
    assert pagers(page) == {}

    # Two retries: three alternatives of one turn, the newest shown, ‹ n/m › on the answer itself.
    page.click("#retry")
    second = wait_answer(page, server, 2)
    wait_for(lambda: pagers(page) == {1: "answer 2/2"}, "2/2 on the answer")
    settled(page)  # the second answer's events ended: a Retry now retries (a full run lost one click)
    page.click("#retry")
    third = wait_answer(page, server, 3)
    wait_for(lambda: pagers(page) == {1: "answer 3/3"}, "3/3 on the answer")
    assert first.parent_id == second.parent_id == third.parent_id
    assert page.locator("#chatbot .msg-pager .pg-next").is_disabled()

    # ‹ shows the earlier answer, › goes back.
    turn_page(page, 1, -1)
    wait_for(lambda: pagers(page) == {1: "answer 2/3"}, "2/3 on the answer")
    wait_for(lambda: bot_texts(page) == [shown(second)], "the second answer to be shown")
    turn_page(page, 1, +1)
    wait_for(lambda: pagers(page) == {1: "answer 3/3"}, "3/3 on the answer again")
    wait_for(lambda: bot_texts(page) == [shown(third)], "the third answer to be shown again")
    assert [m.id for m, _ in service.history(local_actor(server), first.conversation_id)] == [
        first.parent_id, third.id]

    # Rate the second answer in detail: page to it, 👎 opens the form under it, reason and comment.
    turn_page(page, 1, -1)
    wait_for(lambda: pagers(page) == {1: "answer 2/3"}, "2/3 on the answer")
    wait_for(lambda: bot_texts(page) == [shown(second)], "the second answer to be shown")
    settled(page)
    dislike_last(page)
    page.locator("#chatbot #rate-details #rate-save").wait_for(state="visible")
    wait_for(lambda: rated_value(page) == ["Dislike"], "the panel to show the 👎")
    assert "alternative 2 of 3" in page.locator("#rate-title").inner_text()
    save_details(page, reason="other", comment="Not a color I know.")
    assert detail(server, second.id) == {"value": -1, "reason": "other",
                                         "comment": "Not a color I know.", "better_answer": None}

    # Restart on the same data directory: the alternatives, the one shown and the rating persist.
    page.goto("about:blank")  # let the old server close its connections
    server.stop()
    again = start_server(bundled_backend, data_dir=server.settings.data_dir)
    open_app(page, again)
    wait_for(lambda: bot_texts(page) == [shown(second)], "the second answer after the restart")
    wait_for(lambda: pagers(page) == {1: "answer 2/3"}, "2/3 on the answer after the restart")
    assert user_texts(page) == ["Name a color."]
    assert thumbs(page) == ["Disliked", "Like"]
    stored = all_messages(again)
    assert [(m.id, m.parent_id) for m in stored] == [
        (first.parent_id, None), (first.id, first.parent_id), (second.id, first.parent_id),
        (third.id, first.parent_id)]
    assert detail(again, second.id) == {"value": -1, "reason": "other",
                                        "comment": "Not a color I know.", "better_answer": None}
    open_details(page)
    wait_for(lambda: rated_value(page) == ["Dislike"], "the panel to show the stored 👎")
    assert page.locator("#rate-comment textarea").input_value() == "Not a color I know."
    turn_page(page, 1, +1)
    wait_for(lambda: pagers(page) == {1: "answer 3/3"}, "3/3 on the answer after the restart")
    wait_for(lambda: bot_texts(page) == [shown(third)], "the third answer after the restart")
    page.click("#feedback-tab-button")
    page.locator("#fb-summary", has_text="1 rating: 0 liked, 1 disliked").wait_for()
    assert any("Not a color I know." in row for row in table_rows(page, "fb-table"))
    assert [e[:4] for e in rating_events(again)] == [(second.id, -1, None, None),
                                                      (second.id, -1, "other", "Not a color I know.")]


def test_excluded_conversations_stay_out_of_the_dataset_and_the_feedback_tab(page, server,
                                                                               tmp_path):
    service = server.app.service
    open_app(page, server)
    settings(page, temperature=0, max_new=10)
    kept = send(page, server, FRANCE)
    dislike_last(page)
    save_details(page, reason="wrong", comment="Too vague for me.", better="Paris.")

    page.click("#new-chat")
    wait_for(lambda: not bot_texts(page), "an empty new chat")
    settings(page, temperature=0, max_new=10)
    private = send(page, server, OWLS)
    assert private.conversation_id != kept.conversation_id
    page.locator("#chatbot button[aria-label='Like']").click()
    wait_for(lambda: (detail(server, private.id) or {}).get("value") == 1, "the 👍 to be stored")
    page.locator("#exclude input[type=checkbox]").check()
    wait_for(lambda: service.conversation(local_actor(server), private.conversation_id).exclude_from_training,
             "the conversation to be excluded")
    assert not service.conversation(local_actor(server), kept.conversation_id).exclude_from_training

    # The Feedback tab: counts, a plot, a table with the comment, and the label filter.
    page.click("#feedback-tab-button")
    page.locator("#fb-summary", has_text="2 ratings: 1 liked, 1 disliked; 2 shown.").wait_for()
    # what they give training, in the words the Training tab and the downloads use too: the
    # excluded 👍 gives nothing, the 👎 with a better answer gives two KTO examples (one SFT)
    assert ("Your 1 rating (0 liked, 1 disliked, 1 with a better answer) gives 2 training examples: 1 disliked "
            "answer and your 1 better answer. SFT learns from the liked and better answers (1), KTO from "
            "all 2") in page.locator("#fb-summary").inner_text()
    page.locator("#fb-plot canvas, #fb-plot svg").first.wait_for()
    rows = table_rows(page, "fb-table")
    assert len(rows) == 2
    (disliked,) = [r for r in rows if "Too vague for me." in r]
    assert "dislike" in disliked and FRANCE in disliked and RATING_REASONS["wrong"] in disliked
    choose(page, "fb-label", "dislike")
    page.locator("#fb-summary", has_text="1 shown.").wait_for()
    wait_for(lambda: len(table_rows(page, "fb-table")) == 1, "the table to show the 👎 only")
    assert "Too vague for me." in table_rows(page, "fb-table")[0]
    page.fill("#fb-search textarea", "owls")
    page.locator("#fb-search textarea").press("Enter")
    page.locator("#fb-summary", has_text="0 shown.").wait_for()
    choose(page, "fb-label", "all")
    page.locator("#fb-summary", has_text="1 shown.").wait_for()
    assert any(OWLS in row for row in table_rows(page, "fb-table"))

    # A KTO dataset: the excluded conversation's text is not in it, and it loads with datasets.
    page.get_by_text("Download your ratings").click()
    page.locator("#fb-format label", has_text="marked good or bad").click()
    page.click("#fb-build")
    page.locator("#fb-built", has_text="chatlm-kto.jsonl: 2 records").wait_for()
    link = page.locator("#fb-file a[href]").first
    link.wait_for()
    response = page.request.get(urljoin(server.url + "/", link.get_attribute("href")))
    assert response.ok, response.status
    data = response.text()
    assert OWLS not in data and private.content not in data
    assert FRANCE in data and "Paris." in data
    path = tmp_path / "kto.jsonl"
    path.write_text(data, encoding="utf-8")
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_json(str(path))
    assert ds.num_rows == 2
    assert sorted(ds["label"]) == [False, True]
    assert {c[0]["content"] for c in ds["completion"]} == {kept.content, "Paris."}
    assert all(p[-1]["content"] == FRANCE for p in ds["prompt"])

    # Allowed again, the conversation's 👍 joins the next dataset.
    page.click("#chat-tab-button")
    page.locator("#exclude input[type=checkbox]").uncheck()
    wait_for(lambda: not service.conversation(local_actor(server), private.conversation_id)
             .exclude_from_training, "the conversation to be allowed again")
    page.click("#feedback-tab-button")
    page.click("#fb-build")
    page.locator("#fb-built", has_text="chatlm-kto.jsonl: 3 records").wait_for()
