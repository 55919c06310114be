"""A refused UI call is one log line, not a traceback.

Gradio prints the traceback of every exception a handler raises unless it is a ``gr.Error`` made
with ``print_exception=False``; a refusal (a ``ChatLMError``: not signed in, someone else's id, an
empty message) is the app working as meant, and hundreds of tracebacks a day hide the real faults.
So every event of the Blocks passes through ``quiet``: a ``ChatLMError`` reaches the page as a
``gr.Error`` with the same message (escaped: Gradio draws an error's message as HTML, and a
message may quote a name the user chose), and the log gets one line saying which event refused
what. Any other exception is a fault and keeps Gradio's traceback.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import gradio as gr

from chatlm.errors import ChatLMError

log = logging.getLogger(__name__)


def quiet(blocks: gr.Blocks) -> gr.Blocks:
    """Answer refusals of every event of ``blocks`` without a traceback; returns ``blocks``.
    It wraps the two steps every event (queued, ``call/``, ``run/``, streamed) takes:
    ``preprocess_data``, where Gradio itself refuses a value (out of a slider's range, not one
    of a dropdown's choices), and ``call_function``, each call of a handler (and each step of a
    generator)."""
    if getattr(blocks, "_chatlm_quiet", False):
        return blocks
    preprocess, call = blocks.preprocess_data, blocks.call_function

    async def preprocess_data(block_fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await preprocess(block_fn, *args, **kwargs)
        except gr.Error as exc:
            raise _quiet(block_fn, exc) from None

    async def call_function(block_fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await call(block_fn, *args, **kwargs)
        except (ChatLMError, gr.Error) as exc:  # a gr.Error: the handler's own words (an upload refused)
            raise _quiet(block_fn, exc) from None

    blocks.preprocess_data = preprocess_data  # type: ignore[method-assign]
    blocks.call_function = call_function  # type: ignore[method-assign]
    blocks._chatlm_quiet = True  # type: ignore[attr-defined]
    return blocks


def _quiet(block_fn: Any, exc: ChatLMError | gr.Error) -> gr.Error:
    """The error the page gets for a refusal, logged in one line."""
    refused(block_fn, exc.message)
    if isinstance(exc, ChatLMError):
        return gr.Error(html.escape(exc.message, quote=False), print_exception=False)
    exc.print_exception = False
    return exc


def refused(block_fn: Any, message: str) -> None:
    """The one line a refusal leaves: which event, and what the caller was told."""
    if isinstance(block_fn, int):
        name = str(block_fn)
    else:
        name = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "event"
    log.info("refused %s: %s", name, " ".join(str(message).split())[:300])
