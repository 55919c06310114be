"""The chat screen in a real browser (Playwright + Debian's chromium) over the real bundled model.

Every check that something was saved reads the database through the running app's service, so a
test proves both what the user sees and what is stored.
"""

from __future__ import annotations

import time

import pytest

from tests.browser import (
    BOT,
    all_messages,
    answers,
    bot_texts,
    chat_menu,
    last_bot,
    loaded,
    local_actor,
    needs_browser,
    open_app,
    open_chat,
    open_title,
    pagers,
    send,
    settings,
    settled,
    shown,
    sidebar_titles,
    start_sending,
    user_texts,
    wait_answer,
    wait_for,
)

needs_browser()

from chatlm.store.models import Message  # noqa: E402
from chatlm.ui.chat_view import MARKS  # noqa: E402

pytestmark = pytest.mark.slow

FRANCE = "What is the capital of France?"


# ---- helpers -----------------------------------------------------------------------------------
def ask_and_like_france(page, server) -> tuple[int, Message]:
    """Send the France question greedily, wait for the answer and click its thumbs up."""
    settings(page, temperature=0, max_new=40)
    answer = send(page, server, FRANCE)
    settled(page)  # the answer's event has ended: its last redraw cannot replace the button clicked
    page.locator("#chatbot button[aria-label='Like']").last.click()
    conv_id = answer.conversation_id
    wait_for(lambda: dict((m.id, r) for m, r in server.app.service.history(local_actor(server), conv_id))
             .get(answer.id) == 1, "the rating to be stored")
    return conv_id, answer


def assert_france_shown_and_liked(page, answer: Message) -> None:
    page.wait_for_selector(BOT)
    assert FRANCE in sidebar_titles(page)
    assert open_title(page) == FRANCE
    assert user_texts(page) == [FRANCE]
    assert bot_texts(page) == [shown(answer)]
    # Gradio marks the chosen feedback by relabelling the button "Liked" (filled icon, accent colour)
    liked = page.locator("#chatbot button[aria-label='Liked']")
    liked.wait_for(state="visible")
    assert liked.count() == 1
    assert "--color-accent" in (liked.get_attribute("style") or "")
    assert page.locator("#chatbot button[aria-label='Like']").count() == 0
    assert page.locator("#chatbot button[aria-label='Disliked']").count() == 0


# ---- tests -------------------------------------------------------------------------------------
def test_an_answer_cut_at_the_token_limit_says_so(page, server):
    open_app(page, server)
    settings(page, temperature=0, max_new=6)
    answer = send(page, server, "Tell me a long story about a lighthouse keeper.")
    assert answer.content
    notice = page.locator("#notice")
    wait_for(lambda: "cut at the limit of 6 new tokens" in notice.inner_text(), "the token-limit notice")
    assert "press Continue to go on" in notice.inner_text()
    # the answer itself says so too, and still after a reload (the notice is gone then)
    assert bot_texts(page) == [answer.content + MARKS["cut"]]
    loaded(page, page.reload)
    wait_for(lambda: bot_texts(page) == [answer.content + MARKS["cut"]], "the cut mark after a reload")
    assert "cut at the limit" not in page.locator("#notice").inner_text()

    # Continue: the same answer written on, as a new alternative of the turn (the cut one stays)
    settled(page)
    page.click("#continue")
    longer = wait_answer(page, server, 2)
    assert longer.parent_id == answer.parent_id and longer.content.startswith(answer.content)
    assert len(longer.content) > len(answer.content) and longer.generation_params["continued"]
    assert bot_texts(page)[-1] == shown(longer)
    wait_for(lambda: pagers(page) == {1: "answer 2/2"}, "2/2 on the continued answer")
    settings(page, max_new=40)
    send(page, server, FRANCE)
    wait_for(lambda: "cut at the limit" not in notice.inner_text(), "the notice to go with a whole answer")


def test_a_first_visit_is_welcomed_and_an_example_prompt_is_sent_in_one_click(page, server):
    from chatlm.ui.chat_page import EXAMPLES

    open_app(page, server)
    chat = page.locator("#chatbot")
    welcome = chat.get_by_text("Welcome to chatlm")
    welcome.wait_for()
    assert "teach the next version" in chat.inner_text()  # what rating is for, before any answer
    settings(page, temperature=0, max_new=16)
    chat.get_by_text(EXAMPLES[0]).click()
    answer = wait_answer(page, server, 1)
    assert user_texts(page) == [EXAMPLES[0]]
    assert [m.content for m in all_messages(server) if m.role == "user"] == [EXAMPLES[0]]
    assert answer.content and welcome.count() == 0
    page.click("#new-chat")
    welcome.wait_for()  # an empty chat welcomes again
    assert page.locator(BOT).count() == 0


def test_answer_streams_is_rated_and_survives_a_reload(page, server):
    open_app(page, server)
    settings(page, temperature=0, max_new=40)
    start_sending(page, FRANCE)

    # An 8-token answer may be stored before the page draws a partial one on a loaded machine, so
    # growth on the page is checked on longer answers: the story in test_stop_keeps_the_partial_answer
    # (real model) and test_browser_streaming (drawn as it grows).
    answer = wait_answer(page, server, 1)
    final = answer.content
    assert answer.status == "complete"
    assert "Paris" in final
    assert "Paris" in last_bot(page)
    assert answer.generation_params["temperature"] == 0
    assert answer.generation_params["max_new_tokens"] == 40

    page.locator("#chatbot button[aria-label='Like']").last.click()
    history = lambda: server.app.service.history(local_actor(server), answer.conversation_id)  # noqa: E731
    wait_for(lambda: [r for m, r in history() if m.id == answer.id] == [1],
             "the rating +1 to be stored")
    assert [(m.role, m.content, r) for m, r in history()] == [
        ("user", FRANCE, None), ("assistant", final, 1)]

    loaded(page, page.reload)
    assert_france_shown_and_liked(page, answer)


def test_conversation_and_rating_survive_a_restart(page, start_server, bundled_backend, server):
    open_app(page, server)
    conv_id, answer = ask_and_like_france(page, server)
    page.goto("about:blank")  # let the old server close its connections
    server.stop()

    again = start_server(bundled_backend, data_dir=server.settings.data_dir)
    assert again.url != server.url
    open_app(page, again)
    assert_france_shown_and_liked(page, answer)
    stored = again.app.service.history(again.app.service.actor(), conv_id)
    assert [(m.id, m.content, r) for m, r in stored] == [
        (answer.parent_id, FRANCE, None), (answer.id, answer.content, 1)]


def test_stop_keeps_the_partial_answer_and_ends_the_generation(page, server):
    open_app(page, server)
    settings(page, temperature=0, max_new=1000)
    start_sending(page, "Write a very long story about a dragon.")
    wait_for(lambda: len(last_bot(page)) >= 20, "some of the story to appear")
    # A draft typed while the answer streams is kept (the stream does not wipe the box).
    page.fill("#message textarea", "My next question")
    grown = len(last_bot(page))
    wait_for(lambda: len(last_bot(page)) > grown, "the story to go on after typing")
    page.click("#stop")

    page.locator("#notice", has_text="Stopped").wait_for()
    answer = wait_answer(page, server, 1)
    assert answer.status == "stopped"
    assert answer.content.strip()
    assert answer.generation_params["max_new_tokens"] == 1000
    assert answer.completion_tokens is not None and 0 < answer.completion_tokens < 300, (
        f"{answer.completion_tokens} tokens: the generation went on after Stop")
    shown = last_bot(page)
    assert shown == answer.content + MARKS["stopped"]
    time.sleep(1.5)
    assert last_bot(page) == shown, "the answer kept growing after Stop"
    assert page.locator("#message textarea").input_value() == "My next question"
    scheduler = server.app.service.backend.scheduler
    wait_for(lambda: scheduler.active == 0 and scheduler.waiting == 0, "the scheduler to be idle",
             timeout=5)
    assert answers(server)[0].completion_tokens == answer.completion_tokens


def test_retry_adds_a_sibling_answer(page, server):
    open_app(page, server)
    settings(page, max_new=12)
    first = send(page, server, "Name a color.")

    seen: list[str] = []
    page.fill("#message textarea", "a draft")
    page.click("#retry")
    while len(answers(server)) < 2 or answers(server)[1].status == "pending":
        seen.append(last_bot(page))
        time.sleep(0.05)
    second = wait_answer(page, server, 2)
    assert second.id != first.id
    assert second.parent_id == first.parent_id
    assert second.role == "assistant" and second.status == "complete" and second.content
    assert first.generation_params["max_new_tokens"] == second.generation_params["max_new_tokens"] == 12
    assert [m.role for m in all_messages(server)] == ["user", "assistant", "assistant"]
    assert any(t != first.content for t in seen), "the retried answer was never streamed"
    assert bot_texts(page) == [shown(second)]
    assert user_texts(page) == ["Name a color."]
    assert page.locator("#message textarea").input_value() == "a draft"  # Retry keeps the draft
    history = server.app.service.history(local_actor(server), first.conversation_id)
    assert [m.id for m, _ in history] == [first.parent_id, second.id]


def test_sidebar_new_open_rename_delete_on_the_real_model(page, server):
    """New chat, open, rename and delete (with Undo) over the real model; the page title names the
    open chat, a new chat keeps the settings of the last, and Gradio's own 🗑 (which deleted
    nothing) is not offered."""
    service = server.app.service
    open_app(page, server)
    settings(page, max_new=8)
    first = send(page, server, "Hello")
    assert sidebar_titles(page) == ["Hello"]

    page.click("#new-chat")
    wait_for(lambda: not bot_texts(page) and not user_texts(page), "an empty chat")
    settled(page)
    assert page.get_by_label("number input for Maximum new tokens").input_value() == "8"  # remembered
    second = send(page, server, "Tell me a joke.")
    assert second.conversation_id != first.conversation_id
    assert second.generation_params["max_new_tokens"] == 8
    wait_for(lambda: sidebar_titles(page) == ["Tell me a joke.", "Hello"], "two conversations")
    wait_for(lambda: page.title() == "Tell me a joke. · chatlm", "the new chat's title at once")
    assert [c.id for c in service.conversations(local_actor(server))] == [second.conversation_id,
                                                                   first.conversation_id]

    chat_menu(page, "Tell me a joke.", "Rename")
    box = page.locator("#conversations input.conv-rename")
    box.fill("  Jokes  ")
    box.press("Enter")
    wait_for(lambda: sidebar_titles(page) == ["Jokes", "Hello"], "the new title in the list")
    assert service.conversation(local_actor(server), second.conversation_id).title == "Jokes"
    wait_for(lambda: page.title() == "Jokes · chatlm", "the page title to follow the rename")
    assert page.locator("#chatbot button[aria-label='Copy message']").count() >= 1  # the chat's tools
    assert not page.locator("#chatbot button[aria-label='Clear']").is_visible()

    open_chat(page, "Hello")
    wait_for(lambda: user_texts(page) == ["Hello"], "the first conversation to open")
    assert bot_texts(page) == [shown(first)]
    assert open_title(page) == "Hello"
    wait_for(lambda: page.title() == "Hello · chatlm", "the page title of the chat opened")

    chat_menu(page, "Hello", "Delete")
    wait_for(lambda: sidebar_titles(page) == ["Jokes"], "the deleted conversation to leave")
    assert [c.id for c in service.conversations(local_actor(server))] == [second.conversation_id]
    wait_for(lambda: user_texts(page) == ["Tell me a joke."], "the remaining conversation")
    wait_for(lambda: page.title() == "Jokes · chatlm", "the page title of the chat now shown")
    page.click("#undo")
    wait_for(lambda: sidebar_titles(page) == ["Jokes", "Hello"], "Undo to bring it back")
    wait_for(lambda: user_texts(page) == ["Hello"] and bot_texts(page) == [shown(first)],
             "the chat brought back, answer and all")


def test_an_empty_message_is_not_sent(page, server):
    open_app(page, server)
    page.click("#send")
    warnings = page.get_by_text("Type a message first.")
    warnings.first.wait_for()
    page.fill("#message textarea", "   ")
    page.locator("#message textarea").press("Enter")  # the private submit event
    wait_for(lambda: warnings.count() >= 2, "a second warning")
    page.click("#send")
    wait_for(lambda: warnings.count() >= 3, "a third warning")
    page.wait_for_function("window.__gradioCompleted >= 4")  # the page load and the 3 refusals
    assert all_messages(server) == []
    assert server.app.service.conversations(local_actor(server)) == []
    assert user_texts(page) == [] and bot_texts(page) == []
    assert sidebar_titles(page) == []
