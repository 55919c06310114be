"""Hostile markup in a real browser: whatever a user, a document or the model writes is shown as
text or harmless markup; no script runs and no event-handler attribute reaches the page.

The model is a scripted stand-in (tests.scripted.ScriptedBackend) so its output can be forced; the
rating comment and the document are stored through the running app's service, as the UI would.
"""

from __future__ import annotations

import pytest

from tests.browser import (
    bot_texts,
    chat_menu,
    click_and_wait,
    last_sources,
    loaded,
    local_actor,
    needs_browser,
    open_app,
    send,
    settings,
    user_texts,
    wait_for,
)
from tests.scripted import ScriptedBackend

needs_browser()

pytestmark = pytest.mark.slow

HOSTILE = ('<img src=x onerror="window.__pwned=1"> <script>window.__pwned=1</script> '
           '<a href="javascript:window.__pwned=1">click me</a> <svg onload="window.__pwned=1"></svg> '
           '<iframe srcdoc="<script>parent.__pwned=1</script>"></iframe>')
DANGEROUS = ("[onerror], [onload], script, iframe, a[href^='javascript:' i], "
             "[src^='javascript:' i]")
"""What must not exist inside the app's DOM after hostile text is shown."""


@pytest.fixture
def server(start_server):
    backend = ScriptedBackend(["Here: ", HOSTILE, " done"])
    return start_server(backend)


def dangerous(page) -> list[str]:
    """Outer HTML (truncated) of every dangerous element inside the Gradio app."""
    return page.evaluate(
        """sel => [...document.querySelectorAll('.gradio-container')]
                   .flatMap(app => [...app.querySelectorAll(sel)])
                   .map(e => e.outerHTML.slice(0, 160))""", DANGEROUS)


def assert_harmless(page) -> None:
    page.wait_for_timeout(500)  # an onerror fires once the broken image has failed to load
    assert page.evaluate("window.__pwned") is None, "hostile markup ran a script"
    assert dangerous(page) == []


def test_hostile_text_everywhere_runs_no_script(page, server):
    service = server.app.service
    open_app(page, server)
    settings(page, temperature=0)  # the same answers every run (a sampled one failed to match once in four)
    answer = send(page, server, f"Look {HOSTILE}")  # the message, its title and the model's answer
    assert HOSTILE in answer.content
    wait_for(lambda: "click me" in " ".join(user_texts(page)), "the hostile message to be shown")
    assert "click me" in bot_texts(page)[-1]
    assert_harmless(page)

    conv = answer.conversation_id
    service.rate(local_actor(server), answer.id, -1, comment=f"Bad {HOSTILE}", reason=None)
    service.library.load(actor=local_actor(server), conversation_id=conv, name=f"doc {HOSTILE}.txt",
                         text="Owls are birds that hunt at night. " * 20)
    chat_menu(page, "Look", "Rename")  # the title is typed in the list, in place
    box = page.locator("#conversations input.conv-rename")
    box.fill(f"Renamed {HOSTILE}")
    box.press("Enter")
    wait_for(lambda: service.conversation(local_actor(server), conv).title.startswith("Renamed"),
             "the hostile title to be stored")
    loaded(page, page.reload)  # the sidebar, the title, the knowledge panel: all from the database
    wait_for(lambda: "click me" in page.locator("#conversations").inner_text(), "the hostile title")
    page.get_by_text("Knowledge texts").click()
    wait_for(lambda: "click me" in page.locator("#knowledge").inner_text(), "the hostile document name")
    assert_harmless(page)

    send(page, server, "What do owls do?")  # the answer cites the hostile document in Sources
    wait_for(lambda: "click me" in last_sources(page).inner_text(), "the hostile source name")
    assert_harmless(page)

    click_and_wait(page, "#feedback-tab-button")
    wait_for(lambda: "Bad" in page.locator("#fb-table").inner_text(), "the hostile comment in the table")
    assert_harmless(page)
