"""Accessibility and layout at desktop and phone width, in a real browser: axe-core (bundled by
axe-playwright-python) finds no critical violation and no serious one of ours on the Chat, Feedback
and Training tabs; on a phone the sidebar starts closed. With ``CHATLM_SCREENSHOTS=<folder>``
(``make screenshots``) the same run saves the screens shown in the README."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import WATCH_GRADIO_EVENTS, needs_browser, send, settled
from tests.scripted import ScriptedBackend

needs_browser()
axe = pytest.importorskip("axe_playwright_python.sync_playwright", reason="axe-playwright-python is missing")

pytestmark = pytest.mark.slow

WIDTHS = {"desktop": (1400, 900), "phone": (390, 844)}
GRADIO_OWN = {
    ("aria-prohibited-attr", ".empty"),  # the empty state of Gradio's plot
    ("svg-img-alt", ".mark-rect"),  # the bars Vega draws in Gradio's BarPlot
    ("scrollable-region-focusable", "virtual-table-viewport"),  # Gradio's Dataframe body
}
"""Serious findings inside Gradio's own components, which its markup decides (reported upstream's
way: not ours to patch with CSS); anything else serious fails the test."""


def _ours(violation: dict) -> list[str]:
    targets = [" ".join(map(str, n["target"])) for n in violation["nodes"]]
    return [t for t in targets if not any(violation["id"] == rule and part in t for rule, part in GRADIO_OWN)]


@pytest.mark.parametrize("form", list(WIDTHS))
def test_chat_feedback_and_training_pass_axe_at_desktop_and_phone_width(browser, start_server, form):
    server = start_server(ScriptedBackend(["Paris ", "is the capital ", "of France."], delay=0.01))
    width, height = WIDTHS[form]
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_init_script(WATCH_GRADIO_EVENTS)
    page = context.new_page()
    shots = os.environ.get("CHATLM_SCREENSHOTS")
    try:
        page.goto(server.url)
        page.wait_for_selector("#message textarea")
        page.wait_for_function("window.__gradioCompleted >= 1")
        sidebar = page.locator(".sidebar").first
        if form == "phone":  # open, it would cover the whole screen
            page.wait_for_function("!document.querySelector('.sidebar').classList.contains('open')")
        else:
            assert "open" in (sidebar.get_attribute("class") or "")
        if shots:
            page.screenshot(path=str(Path(shots) / f"welcome-{form}.png"))
        send(page, server, "What is the capital of France?")
        settled(page)
        assert page.title() == "What is the capital of France? · chatlm"
        found: dict[str, list[tuple[str, str, list[str]]]] = {}
        for tab in ("chat", "feedback", "training"):
            page.click(f"#{tab}-tab-button")
            settled(page)
            if shots:
                page.screenshot(path=str(Path(shots) / f"{tab}-{form}.png"), full_page=True)
            if tab == "training":  # a header is a word a line (it was a letter a line on a phone)
                page.locator("#tr-adapters th").first.wait_for()
                tall = page.locator("#tr-adapters th, #tr-runs th").evaluate_all(
                    "els => els.filter(e => e.offsetHeight > 3 * (parseFloat(getComputedStyle(e).lineHeight) || 20))"
                    ".map(e => e.innerText.trim())")
                assert tall == [], f"headers wrapped letter by letter: {tall}"
                # on a phone the wide tables say they scroll sideways (only the label column showed)
                assert page.locator("#tr-scroll-hint").is_visible() == (form == "phone")
            violations = axe.Axe().run(page).response["violations"]
            found[tab] = [(v["impact"], v["id"], _ours(v)) for v in violations
                          if v["impact"] == "critical" or (v["impact"] == "serious" and _ours(v))]
        assert found == {"chat": [], "feedback": [], "training": []}, found
    finally:
        context.close()
