"""What the real-browser tests share: Debian's chromium driven by Playwright, a script that counts
Gradio's events in the page, and small waits and readers of what Gradio draws.

The browser test modules skip themselves when chromium or playwright is missing (``needs_browser``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from chatlm.ui.chat_defaults import DEFAULT_MAX_NEW, DEFAULT_TEMPERATURE
from chatlm.ui.chat_view import shown_text

CHROMIUM = shutil.which("chromium")
TIMEOUT = 90.0
"""Seconds to wait for an answer; the CPU may be shared with other work."""
BOT = "#chatbot [data-testid='bot']"
USER = "#chatbot [data-testid='user']"
BOT_LABEL = "bot's message: "


def needs_browser() -> Any:
    """Skip the calling module unless chromium and playwright are installed; returns playwright's
    sync API."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the browser tests need it",
                    allow_module_level=True)
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@contextmanager
def launch() -> Iterator[Any]:
    """Headless Debian chromium (never ``playwright install``)."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
        )
        yield b
        b.close()


@contextmanager
def new_page(browser: Any, *, downloads: bool = False, timezone: str | None = None,
             size: tuple[int, int] = (1280, 900)) -> Iterator[Any]:
    """A fresh context (empty local storage) with the event watcher installed; ``timezone``: the
    browser's (the machine's when None); ``size``: the window's width and height."""
    context = browser.new_context(viewport={"width": size[0], "height": size[1]}, accept_downloads=downloads,
                                  timezone_id=timezone)
    context.add_init_script(WATCH_GRADIO_EVENTS)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT * 1000)
    yield pg
    context.close()


WATCH_GRADIO_EVENTS = """
(() => {
  // Gradio streams event results over fetch() (server-sent events on /queue/data). Count the
  // "process_completed" messages, so a test can wait for an event (the page load included) to
  // end, and keep the "progress" messages a gr.Progress sends.
  window.__gradioCompleted = 0;
  window.__gradioProgress = [];
  const original = window.fetch;
  window.fetch = async function (...args) {
    const response = await original.apply(this, args);
    const url = String(args[0] instanceof Request ? args[0].url : args[0]);
    if (!url.includes("/queue/data") || !response.body) return response;
    const [mine, theirs] = response.body.tee();
    (async () => {
      const reader = mine.getReader();
      const decoder = new TextDecoder();
      let text = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
        const lines = text.split("\\n");
        text = lines.pop();
        for (const line of lines) {
          if (/"msg":\\s*"process_completed"/.test(line)) window.__gradioCompleted += 1;
          if (/"msg":\\s*"progress"/.test(line)) {
            try {
              const data = JSON.parse(line.replace(/^data:\\s*/, ""));
              for (const unit of data.progress_data || []) window.__gradioProgress.push(unit);
            } catch (e) { /* a partial line: ignore */ }
          }
        }
      }
    })();
    return new Response(theirs, { status: response.status, statusText: response.statusText,
                                  headers: response.headers });
  };
  // Remember the progress bars the status trackers draw (they vanish when the event ends).
  window.__progressShown = [];
  new MutationObserver(() => {
    for (const el of document.querySelectorAll(".progress-level-inner, .progress-bar")) {
      const text = (el.textContent || "").trim();
      if (!window.__progressShown.includes(text)) window.__progressShown.push(text);
    }
  }).observe(document, { childList: true, subtree: true, characterData: true });
})();
"""


def wait_for(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def completed(page: Any) -> int:
    """How many Gradio events have ended in this page (the page load included)."""
    return int(page.evaluate("window.__gradioCompleted"))


def settled(page, quiet_s: float = 0.5) -> None:
    """Wait until no Gradio event has ended for ``quiet_s`` (a full run once lost a 👍 clicked
    while the chat was being redrawn at the end of its answer)."""
    count, since = completed(page), time.monotonic()
    deadline = since + 30
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.1)
        if completed(page) != count:
            count, since = completed(page), time.monotonic()


def loaded(page: Any, navigate: Callable[[], Any]) -> None:
    """Navigate and wait for the page-load event to complete, so that nothing typed or set
    afterwards is overwritten by its outputs."""
    navigate()
    page.wait_for_selector("#message textarea")
    page.wait_for_function("window.__gradioCompleted >= 1")
    # the page load runs several events (the chat's view, who is signed in, and what their outputs
    # change): a setting made before the view's event ends was once reset to its default
    settled(page)


def open_app(page: Any, server: Any) -> None:
    loaded(page, lambda: page.goto(server.url))


def click_and_wait(page: Any, selector: str) -> None:
    """Click and wait until the event it started has ended."""
    before = completed(page)
    page.click(selector)
    page.wait_for_function(f"window.__gradioCompleted > {before}")


def choose(page: Any, elem_id: str, option: str) -> None:
    """Pick an option of a Gradio dropdown: type it (the list filters) and press Enter."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(option)
    box.press("Enter")
    wait_for(lambda: box.input_value() == option, f"{option!r} to be chosen in #{elem_id}")


def table_rows(page: Any, elem_id: str) -> list[list[str]]:
    """A gr.Dataframe's rows as shown (Gradio draws them as grid cells, not <td>s)."""
    cells = page.locator(f"#{elem_id} [role=gridcell][data-row]").evaluate_all(
        "els => els.map(e => [Number(e.dataset.row), Number(e.dataset.col), e.innerText.trim()])")
    rows: dict[int, dict[int, str]] = {}
    for row, col, text in cells:
        rows.setdefault(row, {})[col] = text
    return [[r[c] for c in sorted(r)] for _, r in sorted(rows.items())]


def settings(page: Any, *, temperature: float | None = None, max_new: int | None = None) -> None:
    """Set generation settings through the 'Generation settings' accordion."""
    temp_box = page.get_by_label("number input for Temperature")
    if not temp_box.is_visible():
        page.get_by_text("Generation settings").click()
        temp_box.wait_for(state="visible")
    said = {"Temperature": lambda v: f"temperature {float(v):g}",
            "Maximum new tokens": lambda v: f"at most {int(v)} tokens"}
    defaults = {"Temperature": DEFAULT_TEMPERATURE, "Maximum new tokens": DEFAULT_MAX_NEW}
    for label, value in (("Temperature", temperature), ("Maximum new tokens", max_new)):
        if value is None:
            continue
        box = page.get_by_label(f"number input for {label}")
        for _ in range(3):  # the page names a changed setting at the top of the chat once the server
            box.fill(str(value))  # has it: a value typed on a loaded machine was lost now and then
            box.press("Enter")
            if value == defaults[label]:
                break
            try:
                page.locator("#settings-changed", has_text=said[label](value)).wait_for(timeout=5000)
                break
            except Exception:  # playwright's TimeoutError: type it again
                continue


def shown(message: Any) -> str:
    """A stored answer as the chat draws it (with its mark when stopped, cut or failed)."""
    return shown_text(message)


def dislike_last(page: Any) -> None:
    """👎 the last answer and wait for its rating form to be open and still: the page scrolls the
    form into the chat's view, and a click during that scroll lands where the form was."""
    page.locator("#chatbot button[aria-label='Dislike']").last.click()
    page.locator("#rate-save").wait_for(state="visible")
    top = lambda: page.locator("#rate-details").evaluate("el => Math.round(el.getBoundingClientRect().top)")  # noqa: E731
    last = None
    for _ in range(40):
        now = top()
        if now == last:
            return
        last = now
        page.wait_for_timeout(250)


def bot_texts(page: Any) -> list[str]:
    """The raw text of every assistant bubble (Gradio puts it in the aria-label)."""
    labels = page.locator(BOT).evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
    return [(label or "").removeprefix(BOT_LABEL) for label in labels]


def user_texts(page: Any) -> list[str]:
    return [t.strip() for t in page.locator(USER).all_inner_texts()]


def pagers(page: Any) -> dict[int, str]:
    """The ‹ n/m › drawn on the chat's messages, by message index: {3: "answer 2/3", …}."""
    found = page.locator("#chatbot .msg-pager").evaluate_all(
        "els => els.map(e => [Number(e.dataset.index), e.dataset.role, e.querySelector('.pg-label').textContent])")
    return {index: f"{role} {label}" for index, role, label in found}


def turn_page(page: Any, index: int, step: int) -> None:
    """Click ‹ (step -1) or › (+1) on the message at ``index``."""
    page.click(f"#chatbot .msg-pager[data-index='{index}'] .{'pg-prev' if step < 0 else 'pg-next'}")


def local_actor(server: Any) -> Any:
    """The local user (accounts off) as the server's services see them."""
    return server.app.service.actor()


def detail(server: Any, message_id: int) -> dict[str, Any] | None:
    """The local user's stored rating of an answer (value, reason, comment, better answer); None
    when there is none."""
    return server.app.service.rating_detail(local_actor(server), message_id)


def all_messages(server: Any) -> list[Any]:
    """Every stored message, all branches included, read through the running app."""
    from sqlalchemy import select

    from chatlm.store.db import transaction
    from chatlm.store.models import Message

    with transaction(server.app.service.sessions) as s:
        return list(s.scalars(select(Message).order_by(Message.id)))


def answers(server: Any) -> list[Any]:
    return [m for m in all_messages(server) if m.role == "assistant"]


def wait_answer(page: Any, server: Any, count: int) -> Any:
    """Wait until ``count`` answers are stored and the newest is the one on screen; return it."""
    def stored() -> Any:  # an answer's row exists while it streams ("pending"): wait for its end
        rows = answers(server)
        return len(rows) >= count and rows[count - 1].status != "pending" and rows[count - 1]

    msg = wait_for(stored, f"answer #{count} to be stored")
    drawn = shown(msg).strip()

    def on_screen() -> bool:  # an answer with sources is followed by their block (last_sources)
        texts = bot_texts(page)
        text = texts[-1].strip() if texts else None
        return text == drawn or bool(msg.sources and text and text.startswith(drawn + "\n\n<details"))

    try:
        wait_for(on_screen, "the stored answer to be shown")
    except AssertionError as exc:  # say what the page showed instead
        raise AssertionError(f"{exc}: stored {drawn!r}, on screen {bot_texts(page)[-1:]!r}") from None
    return msg


def last_sources(page: Any) -> Any:
    """The sources block under the last answer, opened as a user opens it (a click on its summary)."""
    block = page.locator(f"{BOT} details.sources").last
    block.wait_for()
    if block.get_attribute("open") is None:
        block.locator("summary").click()
    return block


def send(page: Any, server: Any, text: str) -> Any:
    """Type and send a message; wait until its answer is stored and shown, and return it."""
    count = len(answers(server)) + 1
    page.fill("#message textarea", text)
    page.click("#send")
    return wait_answer(page, server, count)


def start_sending(page: Any, text: str) -> None:
    """Type and send a message without waiting for its answer (to watch it stream)."""
    page.fill("#message textarea", text)
    page.click("#send")


def last_bot(page: Any) -> str:
    """The last answer's text as drawn ('' when there is none)."""
    texts = bot_texts(page)
    return texts[-1] if texts else ""


def listed(page: Any) -> dict[str, list[str]]:
    """The sidebar's list as drawn: each date group's heading and its chats' titles, in order (read
    in one go: the list is redrawn as a whole)."""
    groups = page.locator("#conversations").evaluate(
        """el => [...el.querySelectorAll('section.conv-group')].map(g => [
             g.querySelector('h3').textContent.trim(),
             [...g.querySelectorAll('.conv-open')].map(b => b.textContent.trim())])""")
    return {label.title(): titles for label, titles in groups}


def sidebar_titles(page: Any) -> list[str]:
    """Every chat title in the sidebar, top to bottom."""
    return [title for titles in listed(page).values() for title in titles]


def open_title(page: Any) -> str:
    """The title of the chat the sidebar marks as open ('' when none is)."""
    return str(page.locator("#conversations").evaluate(
        "el => el.querySelector('li.open .conv-open')?.textContent.trim() ?? ''"))


def open_chat(page: Any, title: str) -> None:
    """Click a chat in the sidebar."""
    page.locator("#conversations .conv-open", has_text=title).first.click()


def chat_menu(page: Any, title: str, action: str) -> None:
    """Open a chat's "…" menu and pick an action, as a user does (once the list has stopped being
    redrawn: a redraw closes an open menu, as it would under a user's pointer)."""
    settled(page)
    item = page.locator("#conversations li.conv", has=page.locator(".conv-open", has_text=title)).first
    item.locator(".conv-more").click()
    item.locator(".conv-menu").get_by_text(action, exact=True).click()
