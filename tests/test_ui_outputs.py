"""Handlers name what they change: the tuple Gradio gets keeps the layout's order, a name the layout
does not list is refused at once (a typo would otherwise blank another component), and what a handler
leaves out stays as the page has it."""

from __future__ import annotations

import gradio as gr
import pytest

from chatlm.ui.chat_view import API, FOLLOWED, STARTED, UNDONE, VIEW
from chatlm.ui.outputs import Named


def test_named_outputs_keep_the_layout_order_and_refuse_unknown_names() -> None:
    out = Named("chat", "notice", "box")
    assert out(box="", chat=[1]) == ([1], gr.update(), "")
    assert out.of({"box": "B", "chat": "C", "notice": "N", "other": "O"}) == ["C", "N", "B"]
    with pytest.raises(TypeError, match="nottice"):
        out(nottice="typo")
    with pytest.raises(ValueError):
        Named("chat", "chat")


def test_the_chats_outputs_are_what_its_endpoints_return() -> None:
    """The public endpoints' output shapes that scripts rely on (``/send`` returns six values)."""
    assert API.names == ("chat", "ids", "conv_id", "list", "notice", "box")
    assert len(VIEW) == 13 and len(UNDONE) == 16 and len(STARTED) == 11 and len(FOLLOWED) == 9
    assert set(FOLLOWED.names) < set(STARTED.names)
