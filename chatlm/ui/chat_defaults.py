"""What the Chat and Training tabs share: a chat's settings as they show and send them (the
server's defaults, else the user's latest chat), and a user's text quoted in a notice.

Kept apart from ``chatlm.ui.chat``, which builds the page with every tab, so that a tab uses them
without importing the page that imports it.
"""

from __future__ import annotations

from typing import Any

from chatlm.adapters.serving import DEFAULT_MODEL
from chatlm.chat.turns import ChatService
from chatlm.engine.params import SamplingParams
from chatlm.identity.accounts import Actor

DEFAULT_MAX_NEW = 256
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9


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
            settings_of(settings.get("temperature", DEFAULT_TEMPERATURE), settings.get("top_p", DEFAULT_TOP_P),
                        min(int(settings.get("max_new_tokens", DEFAULT_MAX_NEW)), service.settings.max_new_tokens),
                        settings.get("model")))


def new_chat_settings(service: ChatService, actor: Actor) -> tuple[str, dict[str, Any]]:
    """What a new chat of this user starts with: the system prompt and settings of their latest chat
    (remembered on the server, so on every browser), else the server's defaults."""
    return chat_settings(service, *service.remembered(actor))


def sampling_params(settings: dict[str, Any]) -> SamplingParams:
    return SamplingParams(temperature=float(settings["temperature"]),
                          top_p=float(settings["top_p"]),
                          max_new_tokens=int(settings["max_new_tokens"]))


def defaults(service: ChatService) -> tuple[str, float, float, int]:
    """The server's system prompt, temperature, top-p and token limit: what Reset brings back."""
    return (service.settings.system_prompt, DEFAULT_TEMPERATURE, DEFAULT_TOP_P,
            min(DEFAULT_MAX_NEW, service.settings.max_new_tokens))


def changed_settings(service: ChatService, system_prompt: str, temperature: float, top_p: float,
                     max_new: int) -> list[str]:
    """What differs from the server's defaults, in words shown at the top of the chat (a limit set
    once follows a user into every new chat: they should see it there, not find it in a panel)."""
    prompt, temp, p, limit = defaults(service)
    said = []
    if (system_prompt or "").strip() != (prompt or "").strip():
        said.append("own system prompt")
    if temperature is not None and abs(float(temperature) - temp) > 1e-9:
        said.append(f"temperature {float(temperature):g}")
    if top_p is not None and abs(float(top_p) - p) > 1e-9:
        said.append(f"top-p {float(top_p):g}")
    if max_new is not None and int(max_new) != limit:
        said.append(f"at most {int(max_new)} tokens an answer")
    return said
