"""What the service needs from whatever generates text: local scheduler or a remote server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chatlm.engine.generation import Generation
from chatlm.engine.params import SamplingParams

ChatMessages = Sequence[dict[str, str]]


class Backend(Protocol):
    model_id: str
    context_window: int

    def count_tokens(self, messages: ChatMessages) -> int:
        """Tokens the chat template makes of ``messages``, generation prompt included."""
        ...

    def chat(
        self, messages: ChatMessages, params: SamplingParams, *, adapter: str | None = None
    ) -> Generation:
        """Start generating an answer to ``messages``; the handle streams it."""
        ...

    def close(self) -> None: ...
