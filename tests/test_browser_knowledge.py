"""Knowledge texts in a real browser (Playwright + Debian's chromium) over the real bundled model:
upload or paste a text, ask about it, see the cited passages, remove a text, reuse it in another
chat, and have a binary file refused.

What the user sees is checked in the page; what was stored is read through the running app's
service and its database, so every test proves both.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.browser import (
    TIMEOUT,
    bot_texts,
    choose,
    click_and_wait,
    last_sources,
    needs_browser,
    open_app,
    open_title,
    send,
    settings,
    wait_for,
)

needs_browser()

from sqlalchemy import select  # noqa: E402

from chatlm.store.db import transaction  # noqa: E402
from chatlm.store.models import (  # noqa: E402
    Chunk,
    Conversation,
    ConversationDocument,
    Document,
    Message,
)

pytestmark = pytest.mark.slow

ZORBIA = ("The capital of the kingdom of Zorbia is Quillton. Quillton lies on the river Vask and "
          "is known for its purple salt markets. Zorbia is ruled by Queen Amelthe.")
QUESTION = "What is the capital of Zorbia?"
GARDEN = ("Moonflowers in the Hesper valley open only at night and smell of cinnamon. Gardeners "
          "there water them with snow melt collected in copper bowls.")


# ---- helpers -----------------------------------------------------------------------------------
def open_knowledge(page) -> None:
    if not page.locator("#load-doc").is_visible():
        page.click("#knowledge .label-wrap")
        page.locator("#load-doc").wait_for(state="visible")


def upload(page, path) -> None:
    """Choose a file in the upload box and wait until Gradio has uploaded it (its name shows)."""
    page.set_input_files("#upload input[type=file]", str(path))
    page.locator("#upload", has_text=path.stem).wait_for()  # the name, maybe split before .txt


def doc_status(page) -> str:
    return page.locator("#doc-status").inner_text().strip()


def listed_docs(page) -> list[str]:
    return [t.strip() for t in page.locator("#docs label").all_inner_texts()]


def other_docs(page) -> list[str]:
    """The names offered by the 'Reuse a document' dropdown."""
    box = page.locator("#other-docs input")
    box.click()  # a focused box opens its list on the next frame
    time.sleep(0.2)
    names = page.locator("#other-docs li[role=option]").evaluate_all(
        "els => els.map(e => e.getAttribute('aria-label'))")
    box.press("Escape")
    box.blur()  # else the next click on the (still focused) box would not open the list
    return names


def rows(server, model) -> list[Any]:
    with transaction(server.app.service.sessions) as s:
        return list(s.scalars(select(model)))


def links(server) -> set[tuple[int, int]]:
    return {(link.conversation_id, link.document_id) for link in rows(server, ConversationDocument)}


def sources_text(page) -> str:
    return last_sources(page).inner_text()


# ---- tests -------------------------------------------------------------------------------------
def test_upload_ask_cite_paste_remove_and_reuse(page, server, tmp_path):
    service = server.app.service
    fact = tmp_path / "zorbia.txt"
    fact.write_text(ZORBIA + "\n", encoding="utf-8")
    open_app(page, server)
    settings(page, temperature=0, max_new=24)
    open_knowledge(page)

    # Upload: the progress runs to the end, the status says Loaded, the text is listed.
    upload(page, fact)
    click_and_wait(page, "#load-doc")
    page.locator("#doc-status", has_text="Loaded").wait_for()
    assert "zorbia.txt" in doc_status(page)
    assert listed_docs(page) == ["zorbia.txt"]
    # the new chat the text went into is listed and selected in the sidebar before any message
    wait_for(lambda: open_title(page) == "New chat", "the new chat open in the sidebar")
    progress = page.evaluate("window.__gradioProgress")
    fractions = [unit.get("progress") for unit in progress]
    assert len(progress) >= 2 and fractions == sorted(fractions), progress
    assert (progress[-1]["desc"], fractions[-1]) == ("ready", 1), progress
    # The upload box and the paste box were emptied for the next text.
    assert page.locator("#upload", has_text="zorbia").count() == 0
    (doc,) = rows(server, Document)
    assert doc.name == "zorbia.txt" and "Quillton" in doc.text
    conv_id = next(iter(links(server)))[0]
    assert links(server) == {(conv_id, doc.id)}

    # Ask: the answer uses the passage, and the Sources panel shows it with the document name.
    answer = send(page, server, QUESTION)
    assert answer.conversation_id == conv_id
    assert answer.status == "complete"
    assert "Quillton" in answer.content, answer.content
    shown = sources_text(page)  # under the answer, collapsed until opened
    assert "zorbia.txt" in shown and "The capital of the kingdom of Zorbia is Quillton" in shown
    chunk_ids = {c.id for c in rows(server, Chunk) if c.document_id == doc.id}
    (stored, _), = [(m, r) for m, r in service.history(service.actor(), conv_id)
                    if m.id == answer.id]
    assert stored.sources and {s["chunk_id"] for s in stored.sources} <= chunk_ids
    assert stored.sources[0]["document"] == "zorbia.txt" and stored.sources[0]["n"] == 1
    prompt_user = [m["content"] for m in stored.prompt_messages if m["role"] == "user"][-1]
    assert "The capital of the kingdom of Zorbia is Quillton" in prompt_user
    assert QUESTION in prompt_user
    # The question itself is stored as typed, without the passages.
    assert [m.content for m, _ in service.history(service.actor(), conv_id)
            if m.role == "user"] == [QUESTION]

    # Paste a second text: both are listed.
    page.fill("#paste textarea", GARDEN)
    page.fill("#paste-name textarea", "moonflowers")
    click_and_wait(page, "#load-doc")
    page.locator("#doc-status", has_text="moonflowers").wait_for()
    wait_for(lambda: sorted(listed_docs(page)) == ["moonflowers", "zorbia.txt"], "both texts listed")
    assert page.locator("#paste textarea").input_value() == ""
    garden = next(d for d in rows(server, Document) if d.name == "moonflowers")
    assert links(server) == {(conv_id, doc.id), (conv_id, garden.id)}

    # Remove the pasted one: gone from the list and from the chat, but kept as a document.
    page.locator("#docs label", has_text="moonflowers").click()
    page.click("#remove-doc")
    wait_for(lambda: listed_docs(page) == ["zorbia.txt"], "the removed text to leave the list")
    assert links(server) == {(conv_id, doc.id)}
    assert {d.id for d in rows(server, Document)} == {doc.id, garden.id}
    wait_for(lambda: other_docs(page) == ["moonflowers"], "the removed text offered for reuse")

    # A new chat has no texts; reuse the uploaded one there and ask again.
    page.click("#new-chat")
    wait_for(lambda: listed_docs(page) == [] and not bot_texts(page), "an empty new chat")
    wait_for(lambda: doc_status(page) == "", "no leftover 'Loaded …' line in the new chat")
    wait_for(lambda: sorted(other_docs(page)) == ["moonflowers", "zorbia.txt"],
             "both texts offered for reuse")
    choose(page, "other-docs", "zorbia.txt")
    page.click("#reuse-doc")
    wait_for(lambda: listed_docs(page) == ["zorbia.txt"], "the reused text in the new chat")
    wait_for(lambda: other_docs(page) == ["moonflowers"], "only the other text offered for reuse")
    new_links = links(server) - {(conv_id, doc.id)}
    assert len(new_links) == 1
    (new_conv, reused), = new_links
    assert new_conv != conv_id and reused == doc.id
    assert len(rows(server, Document)) == 2  # reused, not stored again
    settings(page, temperature=0, max_new=24)
    again = send(page, server, QUESTION)
    assert again.conversation_id == new_conv
    assert "Quillton" in again.content, again.content
    assert again.sources and again.sources[0]["document"] == "zorbia.txt"
    assert "zorbia.txt" in sources_text(page)


def test_a_binary_file_is_refused_and_nothing_is_stored(page, server, tmp_path):
    binary = tmp_path / "x.txt"
    binary.write_bytes(b"\x00\x01\x02PK\x03\x04" + bytes(range(256)) * 8)
    open_app(page, server)
    open_knowledge(page)
    upload(page, binary)
    click_and_wait(page, "#load-doc")
    page.locator("#doc-status", has_text="Not loaded").wait_for()
    assert doc_status(page) == "Not loaded: x.txt looks like a binary file, not text."
    page.locator("[data-testid='toast-body']", has_text="x.txt looks like a binary file").wait_for()
    assert listed_docs(page) == []
    assert rows(server, Document) == [] and rows(server, Chunk) == []
    assert links(server) == set()
    assert rows(server, Conversation) == [], "a refused text left an empty conversation behind"
    assert rows(server, Message) == []


def test_a_larger_upload_shows_the_progress_bar(page, server, tmp_path):
    """Loading a 50 kB text takes long enough for Gradio to draw its progress bar with the
    steps the library reports."""
    big = tmp_path / "atlas.txt"
    paragraph = ("The province of {n} grows barley and keeps goats; its market opens on day {n} "
                 "of each month and sells wool, cheese and copper pots. ")
    big.write_text("\n\n".join(paragraph.format(n=i) * 4 for i in range(100)), encoding="utf-8")
    open_app(page, server)
    open_knowledge(page)
    upload(page, big)
    click_and_wait(page, "#load-doc")
    page.locator("#doc-status", has_text="Loaded").wait_for()
    drawn = page.evaluate("window.__progressShown")
    # which intermediate steps get drawn depends on when the page samples the bar: at least one
    # with its percentage, then the end (a full run once drew chunking and storing but not indexing)
    # (nor is the last one, "ready - 100%", always drawn before the bar goes: a full run missed it)
    steps = ("reading", "chunking", "storing", "indexing", "ready")
    shown = [float(m.group(1)) for text in drawn if any(step in text for step in steps)
             for m in [re.search(r"([\d.]+)%", text)] if m]
    assert shown, drawn
    assert shown == sorted(shown), f"the bar went backwards: {drawn}"
    assert listed_docs(page) == ["atlas.txt"]
    (doc,) = rows(server, Document)
    assert doc.name == "atlas.txt" and len(rows(server, Chunk)) > 10
    # The dense half of the index follows in the background; wait for it so that it does not
    # take the CPU from the next test, and check that it worked.
    server.app.service.library.wait_for_embeddings(timeout=TIMEOUT)
    (doc,) = rows(server, Document)
    assert doc.embedded
    assert all(c.embedding is not None for c in rows(server, Chunk))
