"""The request bodies ``/v1`` accepts, in OpenAI's (and vLLM's adapter routes') shape, with the size
limits checked while a body is parsed, before anything costly is done."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError

from chatlm.chat.turns import MAX_MESSAGE_CHARS

MAX_TOTAL_CHARS = 4 * MAX_MESSAGE_CHARS
"""All messages of one request together; each one may have MAX_MESSAGE_CHARS, as in the UI."""


class ContentPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ChatMessageIn(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""

    @model_validator(mode="after")
    def _fits(self) -> Self:
        """Refused here, before tokenising: a 5 MB message took 20 s to tokenise before its 400."""
        if len(self.text()) > MAX_MESSAGE_CHARS:
            raise PydanticCustomError("message_too_long",
                                      "a message may have at most {limit} characters",
                                      {"limit": MAX_MESSAGE_CHARS})
        return self


class StreamOptions(BaseModel):
    include_usage: bool = False


class AdapterLoadRequest(BaseModel):
    """chatlm extension: load a LoRA adapter directory while serving."""

    name: str
    path: str
    activate: bool = False


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's runtime LoRA request shape, so that a chatlm front end drives vLLM and chatlm alike."""

    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_int_id: int | None = None


class ChatCompletionRequest(BaseModel):
    model: str
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    continue_final_message: bool = False
    """vLLM's extension: go on writing the last (assistant) message instead of starting a new one."""
    add_generation_prompt: bool = True
    """vLLM's extension, the opposite of ``continue_final_message`` (kept for its clients)."""

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if sum(len(m.text()) for m in self.messages) > MAX_TOTAL_CHARS:
            raise PydanticCustomError("messages_too_long",
                                      "the messages may have at most {limit} characters in all",
                                      {"limit": MAX_TOTAL_CHARS})
        return self
