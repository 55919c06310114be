"""The chat screen reads like a chat app (issue 26), in a real browser at a laptop's and a phone's
size: the conversation fills the window's height, the message box and Send are in view without
scrolling on a first visit and after 20 messages, and the last answer is in view."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser import dislike_last, needs_browser, new_page, open_app, send, settings, sidebar_titles, wait_for

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


def chips(page: Any) -> list[str]:
    """The names on the chips over the message box (none drawn when the box is hidden)."""
    if not page.locator("#doc-chips").is_visible():
        return []
    return [t.removeprefix("📄").strip() for t in page.locator("#doc-chips .doc-chip-name").all_inner_texts()]


def drop_file(page: Any, selector: str, name: str, text: str) -> None:
    """Drag a text file from the desktop onto ``selector``, as a browser does (a DataTransfer)."""
    page.evaluate("""([selector, name, text]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([text], name, {type: 'text/plain'}));
        const target = document.querySelector(selector);
        target.dispatchEvent(new DragEvent('dragover', {bubbles: true, cancelable: true, dataTransfer: dt}));
        target.dispatchEvent(new DragEvent('drop', {bubbles: true, cancelable: true, dataTransfer: dt}));
    }""", [selector, name, text])


@pytest.mark.parametrize("size", list(SIZES))
def test_attach_and_drop_load_texts_shown_as_removable_chips(browser, start_server, size, tmp_path) -> None:
    from tests.scripted import ScriptedBackend

    server = start_server(ScriptedBackend(["Fine."]))
    library = server.app.service.library
    town = tmp_path / "town.txt"
    town.write_text("Brackenford was founded in 1820 by Ada Lyle, a miller from the coast.")
    with new_page(browser, size=SIZES[size]) as page:
        open_app(page, server)
        assert chips(page) == [] and in_view(page, "#attach")  # Attach sits in the message row
        page.locator("#message-row input[type=file]").set_input_files(str(town))
        wait_for(lambda: chips(page) == ["town.txt"], "a chip for the attached text")
        page.locator(".toast-body", has_text="Loaded town.txt").first.wait_for()
        [conv] = server.app.service.conversations(server.app.service.actor())
        assert [d.name for d in library.documents(conv.id)] == ["town.txt"]
        if size == "laptop":  # the chat it made is listed at once (a phone's sidebar is closed)
            wait_for(lambda: sidebar_titles(page) != [], "the new chat in the sidebar")

        drop_file(page, "#chatbot", "orchard.txt", "The Copper Lantern apple was bred in 2004 at the Elder orchard.")
        wait_for(lambda: chips(page) == ["town.txt", "orchard.txt"], "a chip for the dropped text")
        assert [d.name for d in library.documents(conv.id)] == ["town.txt", "orchard.txt"]

        page.locator("#doc-chips .doc-chip-remove[aria-label='Remove town.txt from this chat']").click()
        wait_for(lambda: chips(page) == ["orchard.txt"], "the removed text's chip to go")
        assert [d.name for d in library.documents(conv.id)] == ["orchard.txt"]
        assert sorted(d.name for d in library.user_documents(server.app.service.actor())) == [
            "orchard.txt", "town.txt"]  # out of the chat, still the user's to reuse

        if size == "phone":  # New chat is in the sidebar, closed on a phone
            page.locator(".sidebar .toggle-button").first.click()
            page.wait_for_function("document.querySelector('.sidebar').classList.contains('open')")
        page.click("#new-chat")
        wait_for(lambda: chips(page) == [], "no chips in a new chat")
        # the Knowledge panel (closed) says nothing of the last chat's text either
        assert page.evaluate("() => (document.querySelector('#doc-status')?.textContent || '').trim()") == ""


def test_a_streaming_answer_has_no_thumbs_and_a_long_message_is_kept_short(browser, start_server) -> None:
    """While an answer is written its thumbs, Retry and copy wait for its end; a long pasted
    message shows in a box of its own, scrolled, not the whole chat."""
    from tests.scripted import ScriptedBackend

    server = start_server(ScriptedBackend(["word "] * 30, delay=0.2))
    with new_page(browser, size=SIZES["laptop"]) as page:
        open_app(page, server)
        page.fill("#message textarea", "A long pasted message. " * 200)
        page.click("#send")
        page.locator("#stop").wait_for()
        last_buttons = "#chatbot .message-wrap > .message-buttons-left:not(:has(~ .message-buttons-left))"
        wait_for(lambda: page.locator("#chatbot [data-testid='bot']").count() == 1, "the answer to start")
        wait_for(lambda: page.locator(f"{last_buttons} button[aria-label='Like']").count() == 1
                 and page.locator("#stop").is_visible(), "the streaming answer's buttons drawn")
        assert not page.locator(f"{last_buttons} button[aria-label='Like']").is_visible()
        user = page.locator("#chatbot [data-testid='user']")
        height = user.evaluate("el => el.getBoundingClientRect().height")
        assert 100 < height <= 16 * 16 + 1 and user.evaluate("el => el.scrollHeight > el.clientHeight")
        page.locator("#send").wait_for(timeout=30_000)  # the answer ended
        wait_for(lambda: page.locator(f"{last_buttons} button[aria-label='Like']").is_visible(),
                 "the thumbs once the answer ended")


def test_the_dislike_form_opens_in_view_on_a_phone(browser, start_server) -> None:
    """👎 opens the rating form under its answer inside the chat's box: on a phone it opened below the
    box's visible part with only its title showing; now it is scrolled into view and fits the box."""
    from tests.browser import settled
    from tests.scripted import ScriptedBackend

    server = start_server(ScriptedBackend(["Paris is the capital of France. " * 6]))
    with new_page(browser, size=SIZES["phone"]) as page:
        open_app(page, server)
        send(page, server, "What is the capital of France?")
        send(page, server, "And of Italy?")
        settled(page)
        dislike_last(page)
        page.locator("#rate-comment textarea").wait_for()

        def inside_chat(selector: str) -> bool:
            return page.evaluate("""(selector) => {
                const box = document.querySelector('#chatbot .bubble-wrap').getBoundingClientRect();
                const r = document.querySelector(selector).getBoundingClientRect();
                return r.top >= box.top - 1 && r.bottom <= box.bottom + 1; }""", selector)

        wait_for(lambda: inside_chat("#rate-details"), "the whole form inside the chat's visible box")
        page.locator("#rate-comment textarea").scroll_into_view_if_needed()  # the form scrolls within
        assert inside_chat("#rate-comment textarea")
        page.fill("#rate-comment textarea", "It answered about France.")
        assert page.locator("#rate-comment textarea").input_value() == "It answered about France."
