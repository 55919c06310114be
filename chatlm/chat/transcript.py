"""A conversation as a Markdown file a person can keep: its title, the visible branch, ratings."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

ROLE = {"user": "You", "assistant": "chatlm"}
THUMB = {1: "rated 👍", -1: "rated 👎"}


def filename(title: str, conversation_id: int) -> str:
    """A safe file name from a title (letters, digits, '-' only), with the id so two never clash."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-")[:60] or "chat"
    return f"{slug}-{conversation_id}.md"


def markdown(title: str, system_prompt: str, rows: Sequence[tuple[Any, int | None]]) -> str:
    """``rows``: (message, rating) of the branch on screen, as ``ChatService.history`` gives them."""
    out = [f"# {title}", ""]
    if system_prompt.strip():
        out += [f"*System prompt:* {system_prompt.strip()}", ""]
    for msg, rating in rows:
        if msg.role not in ROLE:
            continue
        when = msg.created_at.strftime("%Y-%m-%d %H:%M UTC") if getattr(msg, "created_at", None) else ""
        mark = f" · {THUMB[rating]}" if rating in THUMB else ""
        status = f" · {msg.status}" if msg.status not in ("complete", "pending") else ""
        out += [f"## {ROLE[msg.role]} · {when}{status}{mark}", "", msg.content, ""]
    return "\n".join(out)
