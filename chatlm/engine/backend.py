"""What the service needs from whatever generates text: local scheduler or a remote server.

Every backend subclasses ``Backend``, so what one cannot do has a stated default (no adapters, no
copying) instead of being probed for with ``getattr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from chatlm.engine.generation import Generation
from chatlm.engine.params import SamplingParams
from chatlm.errors import InputError

ChatMessages = Sequence[dict[str, str]]


class Backend(Protocol):
    model_id: str
    context_window: int
    supports_copy: bool = False
    """``chat(copy_from=..., decline=..., ...)`` constrains an answer to spans of given passages
    (``chatlm.engine.local.LocalBackend.chat``); a backend without it is never passed those."""
    unload_on_switch: bool = False
    """Free the previous default adapter when another becomes the default (a remote engine's few slots)."""

    def count_tokens(self, messages: ChatMessages) -> int:
        """Tokens the chat template makes of ``messages``, generation prompt included."""
        ...

    def chat(self, messages: ChatMessages, params: SamplingParams, *, adapter: str | None = None,
             continue_final: bool = False, **copy: Any) -> Generation:
        """Start generating an answer to ``messages`` (``continue_final``: go on writing the last,
        an assistant's); the handle streams it."""
        ...

    def adapter_names(self) -> list[str]:
        """The adapters loaded, as model ids."""
        return []

    def load_adapter(self, name: str, path: Path) -> float:
        """Load an adapter folder under ``name``; the seconds it took."""
        raise InputError("This backend cannot load adapters.")

    def unload_adapter(self, name: str) -> bool:
        """Free a loaded adapter; whether it was loaded."""
        return False

    def waiting(self) -> int:
        """Answers waiting for a batch slot (0 where the backend does not say: a remote server)."""
        return 0

    def close(self) -> None: ...
