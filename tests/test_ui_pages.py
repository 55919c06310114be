"""A page's record of what it shows (chatlm.ui.answers.Page): one update at a time, and never held
for ever by a follower whose update Gradio did not take up."""

from __future__ import annotations

import asyncio
import time

from chatlm.ui import answers


def test_an_update_waits_for_the_one_in_flight() -> None:
    page = answers.Page()
    order: list[str] = []

    async def first() -> None:
        async with page.drawing():
            order.append("first in")
            await asyncio.sleep(0.2)
            order.append("first out")

    async def second() -> None:
        await asyncio.sleep(0.05)
        async with page.drawing():
            order.append("second in")

    async def both() -> None:
        await asyncio.gather(first(), second())

    asyncio.run(both())
    assert order == ["first in", "first out", "second in"]


def test_a_follower_that_never_let_go_holds_the_page_for_at_most_the_switch_wait() -> None:
    page = answers.Page()
    page.lock.acquire()  # a generator suspended inside drawing(), never resumed

    async def draw() -> float:
        start = time.monotonic()
        async with page.drawing():
            return time.monotonic() - start

    waited = asyncio.run(draw())
    assert answers.SWITCH_WAIT_S <= waited < answers.SWITCH_WAIT_S + 2
    assert page.lock.locked()  # still the other's: not released by the one that did not take it
