"""The chat screen reads like a chat app (issue 26), in a real browser at a laptop's and a phone's
size: the conversation fills the window's height, the message box and Send are in view without
scrolling on a first visit and after 20 messages, and the last answer is in view."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser import needs_browser, new_page, open_app, send, settings, wait_for

needs_browser()

pytestmark = pytest.mark.slow
SIZES = {"laptop": (1400, 900), "phone": (390, 844)}
TURNS = 10
"""Questions sent: with their answers, 20 messages."""


def in_view(page: Any, selector: str) -> bool:
    """Whether the element is wholly inside the window, without scrolling the page."""
    return page.locator(selector).last.evaluate(
        "el => { const r = el.getBoundingClientRect();"
        " return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight + 0.5"
        " && r.left >= 0 && r.right <= window.innerWidth + 0.5; }")


def where(page: Any) -> dict[str, Any]:
    """Where the chat's parts are drawn (for a failure's message)."""
    return page.evaluate(
        "() => Object.fromEntries(['#chatbot', '#message textarea', '#send', '#retry', '#model']"
        ".map(s => { const el = document.querySelector(s); if (!el) return [s, null];"
        " const r = el.getBoundingClientRect(); return [s, [Math.round(r.top), Math.round(r.bottom)]]; })"
        ".concat([['window', [window.innerWidth, window.innerHeight]]]))")


def page_scrolled(page: Any) -> int:
    return page.evaluate("() => Math.round(window.scrollY)")


def last_answer_in_view(page: Any) -> bool:
    """The last answer's bottom edge is inside the chat's scrolled area and inside the window."""
    return page.evaluate(
        "() => { const bots = document.querySelectorAll(\"#chatbot [data-testid='bot']\");"
        " const last = bots[bots.length - 1]; if (!last) return false;"
        " const r = last.getBoundingClientRect();"
        " const box = document.querySelector('#chatbot .bubble-wrap') || document.querySelector('#chatbot');"
        " const b = box.getBoundingClientRect();"
        " return r.bottom <= b.bottom + 2 && r.bottom > b.top && r.bottom <= window.innerHeight; }")


@pytest.mark.parametrize("size", list(SIZES))
def test_message_box_and_send_stay_in_view_and_the_conversation_fills_the_window(browser, server, size) -> None:
    width, height = SIZES[size]
    with new_page(browser, size=(width, height)) as page:
        open_app(page, server)
        assert in_view(page, "#message textarea") and in_view(page, "#send"), f"first visit: {where(page)}"
        assert page_scrolled(page) == 0
        chat_height = page.locator("#chatbot").evaluate("el => el.getBoundingClientRect().height")
        assert chat_height >= 0.45 * height, f"the conversation is {chat_height:.0f} px of a {height} px window"

        # nothing to retry or continue in an empty chat
        assert page.locator("#retry").is_disabled() and page.locator("#continue").is_disabled()
        assert not page.locator("#settings-changed").is_visible()

        settings(page, temperature=0, max_new=12)
        page.evaluate("() => window.scrollTo(0, 0)")  # the settings sit under the message box
        # a changed setting is named at the top of the chat, where a user sees it
        changed = page.locator("#settings-changed")
        wait_for(lambda: changed.is_visible() and "at most 12 tokens" in changed.inner_text(), "the changed settings")
        assert "temperature 0" in changed.inner_text()
        for i in range(TURNS):
            send(page, server, f"Say the number {i + 1}.")
        page.evaluate("() => window.scrollTo(0, 0)")
        assert wait_for(lambda: in_view(page, "#message textarea") and in_view(page, "#send"),
                        f"the message box and Send after 20 messages: {where(page)}", timeout=10)
        assert wait_for(lambda: last_answer_in_view(page), "the last answer to be in view", timeout=10)
        assert page.locator("#chatbot [data-testid='bot']").count() == TURNS
        assert page.locator("#retry").is_enabled() and page.locator("#continue").is_enabled()

        if size == "phone":  # the sidebar covers the screen: picking a chat closes it
            sidebar = page.locator(".sidebar").first
            sidebar.locator(".toggle-button").click()
            page.wait_for_function("document.querySelector('.sidebar').classList.contains('open')")
            page.locator("#conversations .conv-open").first.click()
            page.wait_for_function("!document.querySelector('.sidebar').classList.contains('open')")

        page.click("#settings-reset")  # back to the defaults: the line goes
        wait_for(lambda: not changed.is_visible(), "the settings line to go after Reset", timeout=10)
        assert page.get_by_label("number input for Maximum new tokens").input_value() == "256"
