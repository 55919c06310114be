"""Accounts in a real browser (Playwright + Debian's chromium) with ``CHATLM_AUTH=password``: people
sign in through the /login form, each browser context is one person, and what each page shows is
checked against the others' (and against the database). The server runs the tiny random model: its
answers are nonsense, so a test waits for them in the store, not for their text.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.browser import needs_browser, new_page, sidebar_titles, table_rows, user_texts, wait_for
from tests.conftest import ANN, BOB

needs_browser()

from sqlalchemy import select  # noqa: E402

from chatlm.identity.accounts import AccountService  # noqa: E402
from chatlm.store.db import transaction  # noqa: E402
from chatlm.store.models import Message  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def server(accounts_server):
    """Accounts on, guests allowed; ann is the first account (so the admin), bob a user."""
    return accounts_server


# ---- helpers -----------------------------------------------------------------------------------
def account_line(page) -> str:
    return page.locator("#account").inner_text().strip()


def app_ready(page, line: str) -> None:
    """Wait for the chat screen and its account line (the page-load events have run)."""
    page.wait_for_selector("#message textarea")
    page.locator("#account", has_text=line).wait_for()
    page.wait_for_function("window.__gradioCompleted >= 2")  # the chat's load and whoami


def sign_in(page, server, who: tuple[str, str]) -> None:
    """Through the sign-in form, as a person would."""
    page.goto(f"{server.url}/login")
    page.fill("#name", who[0])
    page.fill("#password", who[1])
    page.click("#sign-in")
    app_ready(page, f"Signed in as {who[0]}")


def as_guest(page, server) -> None:
    page.goto(server.url)
    app_ready(page, "You are a guest")


def reload(page, line: str) -> None:
    page.reload()
    app_ready(page, line)


def answered(server, question: str) -> Message | None:
    """The stored, finished answer to the user message ``question`` (None while it streams)."""
    with transaction(server.app.service.sessions) as s:
        asked = s.scalar(select(Message).where(Message.role == "user", Message.content == question))
        if asked is None:
            return None
        answer = s.scalar(select(Message).where(Message.parent_id == asked.id))
        return answer if answer is not None and answer.status != "pending" else None


def ask(page, server, question: str) -> Message:
    """Send a message and wait until its answer is stored and Send is back."""
    page.fill("#message textarea", question)
    page.click("#send")
    answer = wait_for(lambda: answered(server, question), f"the answer to {question!r}")
    page.locator("#send").wait_for(state="visible")
    return answer


def sidebar(page) -> list[str]:
    return sidebar_titles(page)


def open_knowledge(page) -> None:
    if not page.locator("#load-doc").is_visible():
        page.click("#knowledge .label-wrap")
        page.locator("#load-doc").wait_for(state="visible")


def paste_text(page, name: str, text: str) -> None:
    open_knowledge(page)
    page.fill("#paste textarea", text)
    page.fill("#paste-name textarea", name)
    page.click("#load-doc")
    page.locator("#doc-status", has_text=f"Loaded {name}").wait_for()


def listed_docs(page) -> list[str]:
    return [t.strip() for t in page.locator("#docs label").all_inner_texts()]


def reusable_docs(page) -> list[str]:
    """The names the 'Reuse a document you loaded before' dropdown offers."""
    box = page.locator("#other-docs input")
    box.click()
    time.sleep(0.2)  # a focused box opens its list on the next frame
    names = page.locator("#other-docs li[role=option]").evaluate_all(
        "els => els.map(e => e.getAttribute('aria-label'))")
    box.press("Escape")
    box.blur()
    return names


def tab(page, name: str) -> Any:
    return page.get_by_role("tab", name=name, exact=True)


def tab_shown(page, name: str) -> bool:
    tabs = tab(page, name)
    return tabs.count() > 0 and tabs.first.is_visible()


# ---- tests -------------------------------------------------------------------------------------
def test_two_signed_in_people_see_only_their_own_chats_and_texts(browser, server) -> None:
    with new_page(browser) as ann, new_page(browser) as bob:
        sign_in(ann, server, ANN)
        sign_in(bob, server, BOB)
        assert "(admin)" in account_line(ann) and "(admin)" not in account_line(bob)
        ask(ann, server, "Ann's private question")
        paste_text(ann, "ann-notes", "Ann's launch is on the ninth of March. " * 10)
        ask(bob, server, "Bob's own question")
        paste_text(bob, "bob-notes", "Bob keeps bees on the roof. " * 10)

        for page, line, mine, theirs in ((ann, "Signed in as ann", "Ann's", "Bob's"),
                                         (bob, "Signed in as bob", "Bob's", "Ann's")):
            reload(page, line)  # what the server gives this person back, not what the page kept
            titles = sidebar(page)
            assert len(titles) == 1 and titles[0].startswith(mine), titles
            page.locator("#chatbot [data-testid='user']").first.wait_for()
            assert [t.startswith(mine) for t in user_texts(page)] == [True]
            open_knowledge(page)
            page.locator("#docs label").first.wait_for()
            assert listed_docs(page) == [f"{mine[:-2].lower()}-notes"]
            page.click("#new-chat")  # an empty chat: every text of this person is offered for reuse
            wait_for(lambda page=page: listed_docs(page) == [], "the new chat to have no texts")
            assert reusable_docs(page) == [f"{mine[:-2].lower()}-notes"]
            assert theirs not in page.locator("body").inner_text()

        accounts = AccountService(server.app.service.sessions)
        service = server.app.service
        for name, mine in (("ann", "Ann's"), ("bob", "Bob's")):
            convs = service.conversations(accounts.actor(name))
            assert [c.title[:5] for c in convs] == [mine[:5]]


def test_a_guests_chat_survives_a_reload_and_stays_in_that_browser(browser, server) -> None:
    with new_page(browser) as guest, new_page(browser) as other:
        as_guest(guest, server)
        ask(guest, server, "A guest's question")
        reload(guest, "You are a guest")
        wait_for(lambda: sidebar(guest) == ["A guest's question"], "the guest's chat in the sidebar")
        guest.locator("#chatbot [data-testid='user']").first.wait_for()
        assert user_texts(guest) == ["A guest's question"]  # reopened where it was left

        as_guest(other, server)
        assert sidebar(other) == [] and user_texts(other) == []
        assert "A guest's question" not in other.locator("body").inner_text()
        # a guest's Account tab only says how to get keys
        tab(other, "Account").click()
        other.locator("#ac-line", has_text="Sign in to get an API key").wait_for()
        assert not other.locator("#ac-create-key").is_visible()


def test_only_the_admin_sees_training_and_admin_and_sign_out_leads_to_sign_in(browser, server) -> None:
    accounts = AccountService(server.app.service.sessions)
    with new_page(browser) as ann, new_page(browser) as bob:
        sign_in(ann, server, ANN)
        sign_in(bob, server, BOB)
        assert tab_shown(ann, "Training") and tab_shown(ann, "Admin")
        assert not tab_shown(bob, "Training") and not tab_shown(bob, "Admin")
        assert tab_shown(bob, "Account")
        ann.set_viewport_size({"width": 390, "height": 844})  # a phone wraps the tabs: none hides in a "⋯"
        wait_for(lambda: all(tab_shown(ann, name) for name in ("Chat", "Feedback", "Training", "Admin", "Account")),
                 "every tab in a phone's width")
        ann.set_viewport_size({"width": 1280, "height": 900})

        # the admin's table lists everyone; a user added here can sign in
        tab(ann, "Admin").click()
        wait_for(lambda: [r[:2] for r in table_rows(ann, "ad-users")][:2] == [["ann", "admin"], ["bob", "user"]],
                 "the users table")
        ann.fill("#ad-new-name textarea", "carl")
        ann.fill("#ad-new-password input", "carl's password")
        ann.click("#ad-add")
        ann.locator("#ad-status", has_text="Added carl as a user").wait_for()
        wait_for(lambda: "carl" in [r[0] for r in table_rows(ann, "ad-users")], "carl in the table")
        assert accounts.sign_in("carl", "carl's password").name == "carl"

        # bob makes a key: shown once in full, then only its prefix in his list
        tab(bob, "Account").click()
        bob.locator("#ac-create-key").wait_for(state="visible")
        bob.click("#ac-create-key")
        key_box = bob.locator("#ac-new-key textarea, #ac-new-key input").first
        key_box.wait_for(state="visible")
        key = wait_for(lambda: key_box.input_value(), "the new key")
        assert key.startswith("clm_") and accounts.key_actor(key).name == "bob"
        wait_for(lambda: table_rows(bob, "ac-keys"), "the key in the list")
        assert table_rows(bob, "ac-keys")[0][2] == key[:12] + "…"
        assert key not in bob.locator("#ac-keys").inner_text()

        # sign out: the sign-in page; the app then treats this browser as a new guest, not bob
        bob.locator("#sign-link", has_text="Sign out").click()
        bob.wait_for_url(f"{server.url}/login")  # in this tab, not a new one
        assert bob.locator("#sign-in").is_visible() and bob.locator("#password").is_visible()
        assert len(bob.context.pages) == 1
        as_guest(bob, server)
        assert sidebar(bob) == [] and not tab_shown(bob, "Admin")
        bob.locator("#sign-link", has_text="Sign in").click()  # and back to the form from there
        bob.wait_for_url(f"{server.url}/login")

        # guests (one per browser) are listed only when asked for: they buried the accounts
        tab(ann, "Chat").click()
        tab(ann, "Admin").click()
        ann.locator("#ad-guests", has_text="Show guests (1").wait_for()
        assert [r[2] for r in table_rows(ann, "ad-users")] == ["", "", ""]  # ann, bob, carl
        ann.click("#ad-guests input")
        wait_for(lambda: [r[2] for r in table_rows(ann, "ad-users")] == ["", "", "", "yes"], "the guest listed")
        assert table_rows(ann, "ad-users")[3][0].startswith("guest-")
        ann.click("#ad-guests input")
        wait_for(lambda: len(table_rows(ann, "ad-users")) == 3, "the guest hidden again")


def test_changing_ones_password_then_deleting_ones_account(browser, server) -> None:
    accounts = AccountService(server.app.service.sessions)
    with new_page(browser) as bob:
        sign_in(bob, server, BOB)
        ask(bob, server, "Bob's question before leaving")
        tab(bob, "Account").click()
        bob.locator("#ac-change-password").wait_for(state="visible")
        bob.fill("#ac-current input", BOB[1])
        bob.fill("#ac-new input", "bob's next password")
        bob.fill("#ac-again input", "bob's next password")
        bob.click("#ac-change-password")
        bob.locator("#ac-status", has_text="Password changed").wait_for()
        bob.locator("#ac-after", has_text="Sign in again").click()  # this session ended with the change
        bob.wait_for_url(f"{server.url}/login")
        sign_in(bob, server, ("bob", "bob's next password"))
        assert sidebar(bob) == ["Bob's question before leaving"]

        tab(bob, "Account").click()
        bob.locator("#ac-delete").wait_for(state="visible")
        bob.fill("#ac-delete-password input", "bob's next password")
        bob.click("#ac-delete")  # the box is not ticked: nothing happens but a notice
        bob.locator("#ac-status", has_text="Not deleted: Tick").wait_for()
        assert accounts.actor("bob").name == "bob"
        assert bob.locator("#ac-delete-password input").input_value() == ""  # a refusal clears it
        bob.check("#ac-confirm input")
        bob.fill("#ac-delete-password input", "bob's next password")
        bob.click("#ac-delete")
        bob.locator("#ac-status", has_text="Your account and all your data are deleted").wait_for()
        bob.locator("#ac-after", has_text="Leave").click()
        bob.wait_for_url(f"{server.url}/login")
    with pytest.raises(Exception, match="No user named 'bob'"):
        accounts.actor("bob")
    assert answered(server, "Bob's question before leaving") is None  # his chat went with him


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_sign_in_page_follows_the_colour_scheme_and_passes_axe(browser, server, scheme) -> None:
    """The sign-in page is styled (it was the browser's default page) and dark in a dark browser
    (it stayed white); axe finds nothing serious on it, in either scheme."""
    axe = pytest.importorskip("axe_playwright_python.sync_playwright", reason="axe-playwright-python is missing")
    context = browser.new_context(color_scheme=scheme, viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        page.goto(f"{server.url}/login")
        page.locator("#sign-in").wait_for()
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        channels = [int(c) for c in background[background.index("(") + 1:background.index(")")].split(",")[:3]]
        assert (sum(channels) < 150) == (scheme == "dark"), background
        box = page.locator("#sign-in").bounding_box()
        assert box["width"] > 250 and box["height"] >= 36  # a full-width button, not a default one
        violations = axe.Axe().run(page).response["violations"]
        assert [v["id"] for v in violations if v["impact"] in ("serious", "critical")] == []
    finally:
        context.close()
