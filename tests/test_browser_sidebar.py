"""The sidebar in a real browser (Playwright + Debian's chromium): chats in date groups, a search
box, and each chat's "…" menu (Rename, Export, Delete with Undo); a new chat keeps the user's
settings and the model picked at the top of the chat. A scripted model answers (no CPU for a model:
what is tested is the page and what it stores)."""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path

import pytest

from tests.browser import (
    answers,
    chat_menu,
    listed,
    loaded,
    local_actor,
    needs_browser,
    new_page,
    open_chat,
    open_title,
    send,
    settings,
    settled,
    user_texts,
    wait_for,
)
from tests.scripted import ScriptedBackend

needs_browser()

from chatlm.store.db import transaction  # noqa: E402
from chatlm.store.models import Conversation, utcnow  # noqa: E402

pytestmark = pytest.mark.slow


class AdapterScripted(ScriptedBackend):
    """The scripted model, serving one LoRA adapter by name (what a round leaves behind)."""

    def adapter_names(self) -> list[str]:
        return ["kind-v1"]


@pytest.fixture
def served(start_server):
    return start_server(AdapterScripted(["Fine ", "thanks."], delay=0.02))


@pytest.fixture
def page(browser, served):
    with new_page(browser, downloads=True) as pg:
        loaded(pg, lambda: pg.goto(served.url))
        yield pg


def seed(server, titles_and_ages: list[tuple[str, int]]) -> dict[str, int]:
    """Chats of the local user last changed ``age`` days ago, each with one question."""
    service = server.app.service
    me, ids = local_actor(server), {}
    for title, age in titles_and_ages:
        conv = service.new_conversation(me)
        service.rename(me, conv.id, title)
        with transaction(service.sessions) as s:
            from chatlm.store import repo

            repo.add_message(s, conversation_id=conv.id, role="user", content=f"About {title.lower()}")
            s.get(Conversation, conv.id).updated_at = utcnow() - timedelta(days=age)
        ids[title] = conv.id
    return ids


def test_chats_are_grouped_by_date_searched_renamed_exported_and_deleted_with_undo(page, served):
    ids = seed(served, [("Old notes", 40), ("Trip to Rouen", 10), ("Dinner ideas", 1)])
    service, me = served.app.service, local_actor(served)
    page.click("#new-chat")
    settings(page, max_new=2)
    send(page, served, "Hello there")
    wait_for(lambda: listed(page) == {"Today": ["Hello there"], "Yesterday": ["Dinner ideas"],
                                      "Previous 30 Days": ["Trip to Rouen"], "Older": ["Old notes"]},
             "the chats in date groups")
    wait_for(lambda: page.title() == "Hello there · chatlm", "the page title of the open chat")

    # search: titles and the text of messages, this user's only; nothing found says so
    page.fill("#chat-search input", "rouen")
    wait_for(lambda: listed(page) == {"Previous 30 Days": ["Trip to Rouen"]}, "the search to keep one chat")
    page.fill("#chat-search input", "about dinner")
    wait_for(lambda: listed(page) == {"Yesterday": ["Dinner ideas"]}, "a chat found by its message")
    page.fill("#chat-search input", "zebra")
    wait_for(lambda: "No chat has “zebra”." in page.locator("#conversations").inner_text(), "a word on no match")
    page.fill("#chat-search input", "")
    wait_for(lambda: len(listed(page)) == 4, "every chat again")

    # a click opens a chat
    open_chat(page, "Dinner ideas")
    wait_for(lambda: user_texts(page) == ["About dinner ideas"], "the chat clicked to open")
    assert open_title(page) == "Dinner ideas"

    # Rename in the menu: type over the title, Enter
    chat_menu(page, "Trip to Rouen", "Rename")
    box = page.locator("#conversations input.conv-rename")
    box.fill("Normandy <trip>")
    box.press("Enter")
    wait_for(lambda: "Normandy <trip>" in listed(page).get("Previous 30 Days", []), "the new title")
    assert service.conversation(me, ids["Trip to Rouen"]).title == "Normandy <trip>"

    # Export in the menu: a Markdown file of that chat
    with page.expect_download() as download:
        chat_menu(page, "Normandy <trip>", "Export")
    text = Path(download.value.path()).read_text(encoding="utf-8")
    assert download.value.suggested_filename == f"Normandy-trip-{ids['Trip to Rouen']}.md"
    assert text.startswith("# Normandy <trip>") and "About trip to rouen" in text

    # Delete in the menu: gone at once (list and store), with Undo; the open chat stays open
    chat_menu(page, "Old notes", "Delete")
    wait_for(lambda: "Old notes" not in str(listed(page)), "the deleted chat to leave the list")
    assert ids["Old notes"] not in [c.id for c in service.conversations(me)]
    assert "Deleted “Old notes”." in page.locator("#undo-text").inner_text()
    assert user_texts(page) == ["About dinner ideas"]
    page.click("#undo")
    wait_for(lambda: listed(page).get("Older") == ["Old notes"], "Undo to bring the chat back")
    wait_for(lambda: user_texts(page) == ["About old notes"], "the chat brought back to open")
    assert ids["Old notes"] in [c.id for c in service.conversations(me)]
    page.locator("#undo-box").wait_for(state="hidden")

    # deleting the chat on screen opens the latest one left
    chat_menu(page, "Old notes", "Delete")
    wait_for(lambda: user_texts(page) == ["Hello there"], "the latest chat to open")
    assert ids["Old notes"] not in [c.id for c in service.conversations(me)]

    # a reload keeps the Undo of the latest delete (for its ten minutes)
    loaded(page, page.reload)
    page.locator("#undo-box").first.wait_for(state="visible")  # (Gradio nests a group's id twice)
    assert "Deleted “Old notes”." in page.locator("#undo-text").inner_text()
    page.click("#undo")
    wait_for(lambda: user_texts(page) == ["About old notes"], "the chat brought back after a reload")
    assert ids["Old notes"] in [c.id for c in service.conversations(me)]


def test_a_title_being_typed_survives_the_list_being_redrawn(page, served):
    """An answer that ends in the chat on screen redraws the list (here with a title changed
    elsewhere, from another tab or the shell); a rename typed meanwhile in another chat stays open
    with its text and caret, and Enter saves it."""
    ids = seed(served, [("Groceries", 2), ("Old notes", 40)])
    backend = served.app.service.backend
    backend.hold.clear()  # the answer waits, so the rename is typed while it runs
    page.fill("#message textarea", "Hello there")
    page.click("#send")
    wait_for(lambda: "Hello there" in str(listed(page)), "the new chat in the list")
    chat_menu(page, "Groceries", "Rename")
    box = page.locator("#conversations input.conv-rename")
    box.fill("Groceries for Sunday")
    served.app.service.rename(local_actor(served), ids["Old notes"], "Old notes, archived")
    backend.hold.set()
    wait_for(lambda: [a.status for a in answers(served)] == ["complete"], "the answer to end")
    wait_for(lambda: "Old notes, archived" in str(listed(page)), "the list redrawn with the new title")
    settled(page)
    assert box.input_value() == "Groceries for Sunday" and box.evaluate("el => el === document.activeElement")
    box.press("End")
    box.type("!")
    box.press("Enter")
    wait_for(lambda: served.app.service.conversation(local_actor(served), ids["Groceries"]).title
             == "Groceries for Sunday!", "the title typed across the redraw to be saved")


def test_date_groups_follow_the_browsers_calendar(browser, served):
    """A chat changed a minute either side of the browser's midnight is "Today" or "Yesterday" by
    the browser's calendar, where UTC's would say otherwise (the zone is picked so that it does)."""
    from zoneinfo import ZoneInfo

    from chatlm.ui.sidebar import group_of

    now = utcnow()
    for name in ("Pacific/Kiritimati", "Etc/GMT+1", "Etc/GMT+12", "Asia/Tokyo"):
        zone = ZoneInfo(name)
        local = now.replace(tzinfo=UTC).astimezone(zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC).replace(tzinfo=None)
        picked = next(((name, t) for t in (midnight + timedelta(minutes=1), midnight - timedelta(minutes=1))
                       if group_of(t, now, zone) != group_of(t, now)), None)
        if picked:
            break
    assert picked, "no zone whose calendar differs from UTC's at this hour"
    name, changed = picked
    ids = seed(served, [("Around midnight", 0)])
    with transaction(served.app.service.sessions) as s:
        s.get(Conversation, ids["Around midnight"]).updated_at = changed
    expected = group_of(changed, utcnow(), ZoneInfo(name)).title()  # as `listed` reads headings
    with new_page(browser, timezone=name) as page:
        loaded(page, lambda: page.goto(served.url))
        wait_for(lambda: listed(page) == {expected: ["Around midnight"]}, f"the chat under {expected} in {name}")


def test_a_new_chat_keeps_the_users_settings_and_model_and_the_model_answers(page, served):
    settings(page, max_new=3, temperature=0.2)
    page.locator("#model input").click()
    page.get_by_role("option", name="kind-v1", exact=True).click()
    settled(page)
    first = send(page, served, "First chat")
    assert first.adapter == "kind-v1" and first.generation_params["max_new_tokens"] == 3

    page.click("#new-chat")
    wait_for(lambda: user_texts(page) == [], "an empty chat")
    settled(page)
    assert page.get_by_label("number input for Maximum new tokens").input_value() == "3"
    assert page.locator("#model input").input_value() == "kind-v1"
    page.locator("#model input").click()
    page.get_by_role("option", name="Base model", exact=True).click()
    settled(page)
    second = send(page, served, "Second chat")
    assert second.adapter is None and second.conversation_id != first.conversation_id
    assert second.generation_params["temperature"] == pytest.approx(0.2)

    # each chat keeps its own model: back in the first, kind-v1 answers again
    open_chat(page, "First chat")
    wait_for(lambda: page.locator("#model input").input_value() == "kind-v1", "the first chat's model")
    settled(page)
    third = send(page, served, "And again")
    assert third.adapter == "kind-v1" and len(answers(served)) == 3


def test_the_list_works_from_the_keyboard_and_comes_before_the_chat(page, served):
    """Sidebar first in the page's order (New chat before the tabs and the footer); a chat's "…" opens
    with Enter onto its first action, Escape closes it back onto "…"; Enter on a title opens it."""
    seed(served, [("Keyboard chat", 0), ("Other chat", 3)])
    page.click("#new-chat")
    settled(page)
    order = page.evaluate("""() => {
      const at = (sel) => document.querySelector(sel);
      const before = (a, b) => !!(at(a).compareDocumentPosition(at(b)) & Node.DOCUMENT_POSITION_FOLLOWING);
      return [before('#new-chat', '#chat-tab-button'), before('#conversations', '#message'),
              before('#conversations', 'footer')];
    }""")
    assert order == [True, True, True]
    item = page.locator("#conversations li.conv", has=page.locator(".conv-open", has_text="Keyboard chat"))
    more = item.locator(".conv-more")
    more.focus()
    page.keyboard.press("Enter")
    wait_for(lambda: item.locator(".conv-menu").is_visible(), "the menu to open")
    assert more.get_attribute("aria-expanded") == "true"
    assert page.evaluate("document.activeElement.textContent.trim()") == "Rename"
    page.keyboard.press("Escape")
    wait_for(lambda: not item.locator(".conv-menu").is_visible(), "Escape to close the menu")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "More for Keyboard chat"
    item.locator(".conv-open").focus()
    page.keyboard.press("Enter")
    wait_for(lambda: user_texts(page) == ["About keyboard chat"], "Enter on the title to open the chat")
