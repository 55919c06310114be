"""Answers that wait or stream long, in a real browser (Playwright + Debian's chromium) over a
scripted model (``tests/scripted.py``): a message typed while an answer waits is kept until it can
go, a new chat opened while an answer streams neither moves the view nor misfiles the answer, and
back in that chat the answer is drawn as it grows and can be stopped.

What the page shows is checked against what the running app's service stored.
"""

from __future__ import annotations

import time

import pytest

from tests.browser import (
    all_messages,
    answers,
    bot_texts,
    last_bot,
    local_actor,
    needs_browser,
    new_page,
    open_app,
    open_chat,
    shown,
    sidebar_titles,
    start_sending,
    user_texts,
    wait_for,
)
from tests.scripted import ScriptedBackend

needs_browser()

from chatlm.store.models import Message  # noqa: E402

pytestmark = pytest.mark.slow


STORY = [f"word{i} " for i in range(150)]


@pytest.fixture
def scripted(start_server):
    """A server whose model streams STORY slowly (about 7 s), or holds it while ``hold`` is clear."""
    backend = ScriptedBackend(STORY, delay=0.05)
    return start_server(backend), backend


@pytest.fixture
def spage(browser, scripted):
    with new_page(browser) as pg:
        yield pg


def history(server, conv_id: int) -> list[tuple[str, str, str]]:
    return [(m.role, m.content, m.status) for m, _ in server.app.service.history(local_actor(server), conv_id)]


def visible(page, selector: str) -> bool:
    return page.locator(selector).is_visible()


def stored_answers(server) -> list[Message]:
    return [m for m in answers(server) if m.status != "pending"]


def test_a_message_typed_while_the_answer_waits_stays_in_the_box_until_it_can_go(spage, scripted):
    server, backend = scripted
    backend.pieces = ["Fine", ", thanks."]
    backend.hold.clear()  # the answer waits for its first token
    open_app(spage, server)
    box = spage.locator("#message textarea")
    box.fill("First")
    box.press("Enter")
    wait_for(lambda: user_texts(spage) == ["First"] and box.input_value() == "", "First to be sent")
    wait_for(lambda: visible(spage, "#stop") and not visible(spage, "#send"), "Send to turn into Stop")
    assert [m.content for m in all_messages(server)] == ["First"]  # stored before any token

    box.fill("Second")
    box.press("Enter")
    spage.get_by_text("An answer is still being written in this chat").first.wait_for()
    backend.hold.set()
    wait_for(lambda: len(stored_answers(server)) == 1, "the first answer to be stored")
    wait_for(lambda: bot_texts(spage) == ["Fine, thanks."], "the answer to be shown")
    wait_for(lambda: visible(spage, "#send") and not visible(spage, "#stop"), "Stop to turn back into Send")
    assert box.input_value() == "Second", "the message typed while waiting was lost"
    assert [m.content for m in all_messages(server)] == ["First", "Fine, thanks."]

    box.press("Enter")
    wait_for(lambda: len(stored_answers(server)) == 2, "the second answer to be stored")
    wait_for(lambda: user_texts(spage) == ["First", "Second"], "Second to be shown")
    first, _ = stored_answers(server)
    assert history(server, first.conversation_id) == [
        ("user", "First", "complete"), ("assistant", "Fine, thanks.", "complete"),
        ("user", "Second", "complete"), ("assistant", "Fine, thanks.", "complete")]


def new_chat_while_the_story_streams(spage, server) -> None:
    """Ask for the long story, and open a new chat once it is streaming."""
    open_app(spage, server)
    start_sending(spage, "Tell me a long story.")
    wait_for(lambda: len(last_bot(spage)) > 20, "the story to stream")
    spage.click("#new-chat")
    wait_for(lambda: not user_texts(spage) and not bot_texts(spage), "an empty new chat")


def test_a_new_chat_while_an_answer_streams_neither_moves_the_view_nor_misfiles(spage, scripted):
    server, _ = scripted
    new_chat_while_the_story_streams(spage, server)
    wait_for(lambda: visible(spage, "#send"), "Send to be back in the new chat")
    [running] = answers(server)
    grown = len(running.content)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # the story goes on elsewhere; this view stays empty
        assert not user_texts(spage) and not bot_texts(spage), "the old answer pulled the view back"
        time.sleep(0.1)
    spage.fill("#message textarea", "Another question")
    spage.click("#send")
    wait_for(lambda: user_texts(spage) == ["Another question"], "the new chat's question")
    wait_for(lambda: len(stored_answers(server)) == 2, "both answers to be stored", timeout=30)
    story, other = sorted(stored_answers(server), key=lambda m: m.id)
    assert story.conversation_id == running.conversation_id != other.conversation_id
    assert len(story.content) > grown  # it went on while the page showed the new chat
    assert history(server, story.conversation_id) == [
        ("user", "Tell me a long story.", "complete"), ("assistant", "".join(STORY), "complete")]
    assert history(server, other.conversation_id) == [
        ("user", "Another question", "complete"), ("assistant", "".join(STORY), "complete")]
    wait_for(lambda: sidebar_titles(spage) == ["Another question", "Tell me a long story."],
             "both chats in the sidebar")
    wait_for(lambda: bot_texts(spage) == ["".join(STORY)], "the new chat's answer")
    assert user_texts(spage) == ["Another question"]


def test_back_in_a_chat_whose_answer_streams_it_is_drawn_and_can_be_stopped(spage, scripted):
    server, _ = scripted
    new_chat_while_the_story_streams(spage, server)
    open_chat(spage, "Tell me a long story.")
    wait_for(lambda: user_texts(spage) == ["Tell me a long story."], "the story's chat again")
    now = len(last_bot(spage))
    wait_for(lambda: len(last_bot(spage)) > now + 10, "the story to go on growing in view")
    assert visible(spage, "#stop") and not visible(spage, "#send")
    spage.click("#stop")
    spage.locator("#notice", has_text="Stopped").wait_for()
    [answer] = wait_for(lambda: stored_answers(server), "the stopped answer to be stored")
    assert answer.status == "stopped" and 0 < len(answer.content) < len("".join(STORY))
    wait_for(lambda: bot_texts(spage) == [shown(answer)], "the stopped answer shown")
    assert visible(spage, "#send") and not visible(spage, "#stop")
