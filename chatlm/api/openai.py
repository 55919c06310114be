"""OpenAI-compatible ``/v1`` routes on the same process and port as the UI, over the same scheduler.

The API is stateless like OpenAI's: callers send the whole conversation each time and nothing is
stored; chats kept for ratings and training are the UI's.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from chatlm.engine.params import SamplingParams
from chatlm.engine.scheduler import Generation
from chatlm.errors import ChatLMError, InputError, NotFoundError
from chatlm.service import ChatService

_END = object()


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


class StreamOptions(BaseModel):
    include_usage: bool = False


class AdapterLoadRequest(BaseModel):
    """chatlm extension: load a LoRA adapter directory while serving."""

    name: str
    path: str
    activate: bool = False


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


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return JSONResponse(error_body(message, kind, code, param), status_code=status)


class OpenAIRoutes:
    """Holds the service; ``install`` adds the routes and the OpenAI-shaped error handlers."""

    def __init__(self, service: ChatService) -> None:
        self.service = service

    def models(self) -> list[str]:
        return [self.service.backend.model_id, *self.service.adapter_names()]

    def _auth(self, request: Request) -> None:
        keys = self.service.settings.api_keys
        if not keys:
            return
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or header.removeprefix("Bearer ").strip() not in keys:
            raise _AuthError()

    def install(self, app: FastAPI) -> None:
        router = APIRouter(prefix="/v1", dependencies=[Depends(self._auth)])
        router.add_api_route("/models", self.list_models, methods=["GET"])
        router.add_api_route("/chat/completions", self.chat_completions, methods=["POST"])
        router.add_api_route("/adapters", self.load_adapter, methods=["POST"])
        app.include_router(router)

        @app.exception_handler(_AuthError)
        async def _auth_error(_: Request, __: _AuthError) -> JSONResponse:
            return _error(401, "Missing or invalid API key (send `Authorization: Bearer <key>`).",
                          "invalid_api_key")

        @app.exception_handler(RequestValidationError)
        async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
            first = exc.errors()[0] if exc.errors() else {}
            where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
            return _error(400, f"Invalid request: {first.get('msg', 'malformed body')}"
                          + (f" ({where})" if where else ""), "invalid_request", where)

        @app.exception_handler(ChatLMError)
        async def _chatlm_error(_: Request, exc: ChatLMError) -> JSONResponse:
            return _error(exc.status_code, exc.message, exc.code)

    async def list_models(self) -> dict[str, Any]:
        now = int(time.time())
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": now, "owned_by": "chatlm"} for m in self.models()
        ]}

    async def load_adapter(self, body: AdapterLoadRequest) -> dict[str, Any]:
        seconds = await asyncio.to_thread(self.service.load_adapter, body.name, body.path,
                                          activate=body.activate)
        return {"name": body.name, "seconds": round(seconds, 3),
                "active": self.service.active_adapter, "adapters": self.service.adapter_names()}

    async def chat_completions(self, body: ChatCompletionRequest) -> Any:
        adapter = self._adapter_for(body.model)
        if body.n != 1:
            raise InputError("Only n=1 is supported.")
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        params = SamplingParams(
            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, stop=stop,
            seed=body.seed, max_new_tokens=max_tokens or self.service.settings.max_new_tokens,
        ).validate().clamped(self.service.settings.max_new_tokens)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        gen = await asyncio.to_thread(self.service.generate, messages, params, adapter)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self._stream(gen, cid, body.model, usage),
                                     media_type="text/event-stream")
        try:
            text = await _collect(gen)
        finally:
            gen.cancel()
        return {
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": _finish(gen)}],
            "usage": _usage(gen),
        }

    def _adapter_for(self, model: str) -> str | None:
        if model == self.service.backend.model_id:
            return None
        if model in self.service.adapter_names():
            return model
        raise NotFoundError(f"The model `{model}` does not exist; GET /v1/models lists them.")

    async def _stream(self, gen: Generation, cid: str, model: str,
                      usage: bool) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created,
                                    "model": model, "choices": [{"index": 0, "delta": delta,
                                                                  "finish_reason": finish}]}
            if usage:
                body["usage"] = None
            return f"data: {json.dumps(body)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            async for delta in _deltas(gen):
                yield chunk({"content": delta})
            if gen.finish_reason == "error":
                yield f"data: {json.dumps(error_body(gen.error or 'failed', 'server_error'))}\n\n"
                return
            yield chunk({}, _finish(gen))
            if usage:
                yield ("data: " + json.dumps({"id": cid, "object": "chat.completion.chunk",
                                              "created": created, "model": model, "choices": [],
                                              "usage": _usage(gen)}) + "\n\n")
            yield "data: [DONE]\n\n"
        finally:
            gen.cancel()  # a client that went away frees its batch slot at once


class _AuthError(Exception):
    pass


async def _deltas(gen: Generation) -> AsyncIterator[str]:
    """The generation's deltas without blocking the event loop; errors end the stream quietly."""
    it = iter(gen)

    def step() -> object:
        try:
            return next(it, _END)
        except ChatLMError:
            return _END

    while (delta := await asyncio.to_thread(step)) is not _END:
        yield str(delta)


async def _collect(gen: Generation) -> str:
    async for _ in _deltas(gen):
        pass
    if gen.finish_reason == "error":
        raise ChatLMError(gen.error or "generation failed")
    return gen.text


def _finish(gen: Generation) -> str:
    return "length" if gen.finish_reason == "length" else "stop"


def _usage(gen: Generation) -> dict[str, int]:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens}
