"""Editing a message in a real browser (Playwright + Debian's chromium) over the real bundled model:
the chat's pencil edits a question into a new branch, later or first; the edit box's keys (Enter
saves, Shift+Enter a new line, Escape leaves it); and the ‹ n/m › pagers that move between the
branches and between retried answers.

What the user sees is checked in the page; what was stored is read through the running app's
service, so every test proves both.
"""

from __future__ import annotations

import pytest

from tests.browser import (
    all_messages,
    bot_texts,
    detail,
    local_actor,
    needs_browser,
    open_app,
    pagers,
    send,
    settings,
    settled,
    shown,
    turn_page,
    user_texts,
    wait_answer,
    wait_for,
)

needs_browser()

pytestmark = pytest.mark.slow


def edit_question(page, index: int, text: str, *, enter: bool = False) -> None:
    """Edit the ``index``-th user message with the chat's pencil button and submit it (with ✓,
    or with Enter)."""
    page.locator("#chatbot button[aria-label='Edit']").nth(index).click()
    box = page.locator("#chatbot textarea.edit-textarea")
    box.fill(text)
    if enter:
        box.press("Enter")
    else:
        page.locator("#chatbot button[aria-label='Submit']").click()


def test_editing_a_later_message_starts_a_branch(page, server):
    service = server.app.service
    open_app(page, server)
    settings(page, temperature=0, max_new=6)
    first = send(page, server, "Name a color.")
    old = send(page, server, "Name an animal.")
    edit_question(page, 1, "Name a fruit.")
    edited = wait_answer(page, server, 3)
    wait_for(lambda: user_texts(page) == ["Name a color.", "Name a fruit."],
             "the edited question in place of the old one")
    assert bot_texts(page) == [shown(first), shown(edited)]
    page.locator("#chatbot button[aria-label='Like']").last.click()
    wait_for(lambda: (detail(server, edited.id) or {}).get("value") == 1, "the 👍 to be stored")

    questions = [m for m in all_messages(server) if m.role == "user"]
    assert [(q.content, q.parent_id) for q in questions] == [
        ("Name a color.", None), ("Name an animal.", first.id), ("Name a fruit.", first.id)]
    assert old.parent_id == questions[1].id and edited.parent_id == questions[2].id
    assert [m.content for m, _ in service.history(local_actor(server), first.conversation_id)] == [
        "Name a color.", first.content, "Name a fruit.", edited.content]


def test_editing_the_first_message_starts_a_branch(page, server):
    service = server.app.service
    open_app(page, server)
    settings(page, temperature=0, max_new=6)
    old = send(page, server, "Name a color.")
    # the edit box is one to write in, Shift+Enter a new line, Escape leaves the question as it was
    page.locator("#chatbot button[aria-label='Edit']").first.click()
    box = page.locator("#chatbot textarea.edit-textarea")
    assert box.evaluate("el => el.getBoundingClientRect().height") >= 80
    box.press("Shift+Enter")
    assert box.input_value() == "Name a color.\n"
    box.press("Escape")
    wait_for(lambda: box.count() == 0 and user_texts(page) == ["Name a color."], "the edit left")
    edit_question(page, 0, "Name a fruit.", enter=True)  # Enter saves
    edited = wait_answer(page, server, 2)
    settled(page)
    assert user_texts(page) == ["Name a fruit."]
    assert bot_texts(page) == [shown(edited)]
    questions = [m for m in all_messages(server) if m.role == "user"]
    assert [(q.content, q.parent_id) for q in questions] == [("Name a color.", None),
                                                             ("Name a fruit.", None)]
    assert old.parent_id == questions[0].id and edited.parent_id == questions[1].id
    assert [m.content for m, _ in service.history(local_actor(server), old.conversation_id)] == [
        "Name a fruit.", edited.content]

    # The edited question carries ‹ 2/2 ›: ‹ reaches the original question and its answer, ›
    # comes back, and a later turn on the edited branch is kept.
    wait_for(lambda: pagers(page) == {0: "question 2/2"}, "2/2 on the edited question")
    # editing it again, its ‹ 2/2 › stays beside the edit box, above the answer (it jumped under it)
    page.locator("#chatbot button[aria-label='Edit']").first.click()
    page.locator("#chatbot textarea.edit-textarea").wait_for()

    def pager_above_answer() -> bool:
        return page.evaluate("""() => {
            const pager = document.querySelector('#chatbot .msg-pager');
            const answer = document.querySelector("#chatbot [data-testid='bot']");
            return !!pager && !!answer
                && pager.getBoundingClientRect().bottom <= answer.getBoundingClientRect().top; }""")

    wait_for(pager_above_answer, "the question's pager beside its edit box")
    page.locator("#chatbot textarea.edit-textarea").press("Escape")
    wait_for(lambda: user_texts(page) == ["Name a fruit."] and pager_above_answer(), "the edit left")
    later = send(page, server, "And another one?")
    wait_for(lambda: pagers(page) == {0: "question 2/2"}, "2/2 on the edited question")
    turn_page(page, 0, -1)
    wait_for(lambda: user_texts(page) == ["Name a color."], "the original question")
    assert bot_texts(page) == [shown(old)]
    wait_for(lambda: pagers(page) == {0: "question 1/2"}, "1/2 on the original question")
    turn_page(page, 0, +1)
    wait_for(lambda: user_texts(page) == ["Name a fruit.", "And another one?"], "the edited branch")
    assert bot_texts(page) == [shown(edited), shown(later)]

    # Every turn pages on its own message: retry the last answer, and both pagers are drawn.
    settled(page)
    page.click("#retry")
    retried = wait_answer(page, server, 4)
    wait_for(lambda: pagers(page) == {0: "question 2/2", 3: "answer 2/2"}, "a pager on each paged turn")
    turn_page(page, 0, -1)
    wait_for(lambda: user_texts(page) == ["Name a color."], "the original question again")
    wait_for(lambda: pagers(page) == {0: "question 1/2"}, "1/2 on the original question")
    turn_page(page, 0, +1)
    wait_for(lambda: user_texts(page) == ["Name a fruit.", "And another one?"], "back on the edit")
    assert bot_texts(page) == [shown(edited), shown(retried)]  # the answer last shown there
    wait_for(lambda: pagers(page) == {0: "question 2/2", 3: "answer 2/2"}, "both pagers again")
