"""A new user's questions about a short text in one chat, in a real browser over the real bundled
model: factoid questions get the copied answer with its citation and the sentence that proves it
(highlighted in the sources), the question the text does not answer gets the decline."""

from __future__ import annotations

import pytest

from tests.browser import last_sources, needs_browser, open_app, send

needs_browser()

from chatlm.chat.prompts import NOT_FOUND  # noqa: E402

pytestmark = pytest.mark.slow

ACME = ("Acme Widgets was founded in 1987 by Dana Kowalski in Tacoma, Washington. The company makes brass "
        "hinges and steel brackets.\nIts head office moved to Boise, Idaho, in 2004. Acme employs 340 people "
        "and its chief executive is Priya Raman.\nThe company's best-selling product is the Model 7 hinge, "
        "which costs 12 dollars. Acme's factory runs two shifts a day.")


def test_questions_about_a_text_in_one_chat_are_answered_cited_or_declined(page, server):
    open_app(page, server)
    page.click("#knowledge .label-wrap")
    page.fill("#paste textarea", ACME)
    page.fill("#paste-name textarea", "acme.txt")
    page.click("#load-doc")
    page.locator("#doc-status", has_text="Loaded").wait_for()
    server.app.service.library.wait_for_embeddings()

    founded = send(page, server, "When was Acme founded?")
    assert founded.content == ("1987 [1]\n\n> “Acme Widgets was founded in 1987 by Dana Kowalski in Tacoma, "
                               "Washington.”"), founded.content
    sources = last_sources(page)  # under the answer, numbered like its [1], the sentence in bold
    sources.locator("strong", has_text="Acme Widgets was founded in 1987").wait_for()
    assert sources.inner_text().strip().startswith("Source (1)") and "[1] acme.txt:" in sources.inner_text()

    price = send(page, server, "How much does the Model 7 hinge cost?")  # a second question, same chat
    assert price.content.startswith("12 dollars [1]") and "which costs 12 dollars." in price.content
    assert price.conversation_id == founded.conversation_id

    dog = send(page, server, "What is the name of Acme's dog?")
    assert dog.content.startswith(NOT_FOUND) and "The closest passage is [1] (acme.txt)" in dog.content
    assert page.get_by_text(NOT_FOUND).count() >= 1  # the user reads it
