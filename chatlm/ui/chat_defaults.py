"""What the Chat and Training tabs share: a chat's settings as they show and send them (the
server's defaults, else the user's latest chat), and a user's text quoted in a notice.

Kept apart from ``chatlm.ui.chat``, which builds the page with every tab, so that a tab uses them
without importing the page that imports it.
"""

from __future__ import annotations

from typing import Any

from chatlm.engine.params import SamplingParams
from chatlm.service import DEFAULT_MODEL, ChatService

DEFAULT_MAX_NEW = 256


def settings_of(temperature: float, top_p: float, max_new: int, model: str | None = None) -> dict[str, Any]:
    return {"temperature": temperature, "top_p": top_p, "max_new_tokens": int(max_new),
            "model": model or DEFAULT_MODEL}


def plain(text: str) -> str:
    """A user's text inside a Markdown notice, its markup shown as typed."""
    return "".join(f"\\{c}" if c in "\\`*_{}[]()<>#+-.!|~" else c for c in text)


def chat_settings(service: ChatService, system_prompt: str | None, settings: dict[str, Any]
                  ) -> tuple[str, dict[str, Any]]:
    """A chat's system prompt and settings as the chat shows and sends them: the server's defaults
    where one is missing, the token limit no more than the server's."""
    return (service.settings.system_prompt if system_prompt is None else system_prompt,
            settings_of(settings.get("temperature", 0.7), settings.get("top_p", 0.9),
                        min(int(settings.get("max_new_tokens", DEFAULT_MAX_NEW)), service.settings.max_new_tokens),
                        settings.get("model")))


def new_chat_settings(service: ChatService, uid: int) -> tuple[str, dict[str, Any]]:
    """What a new chat of this user starts with: the system prompt and settings of their latest chat
    (remembered on the server, so on every browser), else the server's defaults."""
    return chat_settings(service, *service.remembered(uid))


def sampling_params(settings: dict[str, Any]) -> SamplingParams:
    return SamplingParams(temperature=float(settings["temperature"]),
                          top_p=float(settings["top_p"]),
                          max_new_tokens=int(settings["max_new_tokens"]))
