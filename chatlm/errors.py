"""One base error whose message is safe to show to a user, and a few kinds of it."""

from __future__ import annotations


class ChatLMError(Exception):
    """An error with a message meant for the person using the app."""

    status_code: int = 400
    code: str = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ChatLMError):
    """A setting is missing or out of range."""

    code = "config_error"


class InputError(ChatLMError):
    """The user sent something we cannot use (empty, too long, out of range)."""


class NotFoundError(ChatLMError):
    """A conversation, message, model or adapter does not exist (or is not yours)."""

    status_code = 404
    code = "not_found"


class PermissionDeniedError(ChatLMError):
    """The caller may not touch this object."""

    status_code = 403
    code = "permission_denied"


class BusyError(ChatLMError):
    """The generation queue is full; the client should retry shortly."""

    status_code = 429
    code = "busy"


class StorageError(ChatLMError):
    """The database is locked, full or otherwise refused a write."""

    status_code = 503
    code = "storage_error"


class ModelLoadError(ChatLMError):
    """The model or adapter could not be loaded."""

    status_code = 500
    code = "model_load_error"


class AdapterError(ChatLMError):
    """An adapter directory is missing, incomplete, not safetensors, or for another base model."""

    code = "invalid_adapter"
