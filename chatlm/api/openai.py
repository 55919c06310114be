"""OpenAI-compatible ``/v1`` routes on the same process and port as the UI, over the same scheduler.

The API is stateless like OpenAI's: callers send the whole conversation each time and nothing is
stored; chats kept for ratings and training are the UI's. Every error under ``/v1`` has OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}``, whatever went wrong (a bad body, an
unknown path, a bug); bodies and messages are size-checked before anything costly is done.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from chatlm.adapters.serving import BASE_MODEL
from chatlm.api.bodies import (
    AdapterLoadRequest,
    ChatCompletionRequest,
    LoadLoRAAdapterRequest,
    UnloadLoRAAdapterRequest,
)
from chatlm.chat.turns import MAX_MESSAGE_CHARS, ChatService
from chatlm.engine.generation import Generation
from chatlm.engine.params import SamplingParams
from chatlm.errors import ChatLMError, InputError, NotFoundError, PermissionDeniedError
from chatlm.identity.accounts import Actor
from chatlm.identity.requests import Identity

PREFIX = "/v1"
MAX_BODY_BYTES = 4 * 1024 * 1024
"""A request body above this is refused with 413 before it is parsed (from Content-Length, or
while reading a chunked body). It holds MAX_TOTAL_CHARS even written as JSON ``\\uXXXX`` escapes
(6 bytes a character)."""
_TOO_LARGE = (f"The request body is larger than the limit of {MAX_BODY_BYTES // 1024**2} MB; send "
              f"messages of at most {MAX_MESSAGE_CHARS} characters.", "request_too_large")
_ROUTES = {"/models": "GET", "/chat/completions": "POST", "/adapters": "POST",
           "/load_lora_adapter": "POST", "/unload_lora_adapter": "POST"}


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(status: int, message: str, code: str, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return JSONResponse(error_body(message, kind, code, param), status_code=status, headers=headers)


def _is_api(request: Request) -> bool:
    return _is_api_path(request.url.path)


def _is_api_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class _ContentLengthLimit:
    """Refuses a /v1 request whose Content-Length is over MAX_BODY_BYTES before reading any of it.
    A chunked body is counted while read by the router's ``max_body_size``; that limit alone would
    answer a declared length in plain text, not in OpenAI's shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_api_path(scope["path"]):
            length = Headers(scope=scope).get("content-length", "")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                await _error(413, *_TOO_LARGE)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _http_message(exc: StarletteHTTPException) -> tuple[str, str]:
    """A user-facing message and code for Starlette's and FastAPI's own HTTP errors."""
    if exc.status_code == 413:
        return _TOO_LARGE
    if exc.status_code == 400:  # FastAPI could not read the body as JSON at all
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):
            return "Invalid request: the body is not valid UTF-8.", "invalid_json"
        if isinstance(cause, RecursionError):
            return "Invalid request: the body's JSON is nested too deeply.", "invalid_json"
        return "Invalid request: the body could not be parsed as JSON.", "invalid_json"
    return str(exc.detail), "http_error"


class OpenAIRoutes:
    """Holds the service; ``install`` adds the routes and the OpenAI-shaped error handlers."""

    def __init__(self, service: ChatService, identity: Identity) -> None:
        self.service = service
        self.identity = identity

    def models(self) -> list[str]:
        return [self.service.backend.model_id, *self.service.adapters.names()]

    def _auth(self, request: Request) -> Actor:
        """Every /v1 call acts as the user of its key (``chatlm.identity.requests``); none, no call."""
        actor = self.identity.api_actor(request.headers.get("authorization", ""))
        if actor is None:
            raise _AuthError()
        request.state.actor = actor
        return actor

    def install(self, app: FastAPI) -> None:
        """Add the routes (with a catch-all for the rest of ``/v1``, so that an unknown path or
        method is answered here and not by the UI mounted at ``/``) and the error handlers, which
        keep FastAPI's own answers for paths outside ``/v1``."""
        router = APIRouter(prefix=PREFIX, dependencies=[Depends(self._auth)],
                           max_body_size=MAX_BODY_BYTES)
        router.add_api_route("/models", self.list_models, methods=["GET"])
        router.add_api_route("/chat/completions", self.chat_completions, methods=["POST"])
        router.add_api_route("/adapters", self.load_adapter, methods=["POST"])
        router.add_api_route("/load_lora_adapter", self.load_lora_adapter, methods=["POST"])
        router.add_api_route("/unload_lora_adapter", self.unload_lora_adapter, methods=["POST"])
        for path in ("", "/{path:path}"):
            router.add_api_route(path, self.unknown, include_in_schema=False,
                                 methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
        app.include_router(router)
        app.add_middleware(_ContentLengthLimit)

        @app.exception_handler(_AuthError)
        async def _auth_error(_: Request, __: _AuthError) -> JSONResponse:
            return _error(401, "Missing or invalid API key (send `Authorization: Bearer <key>`).",
                          "invalid_api_key")

        @app.exception_handler(RequestValidationError)
        async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
            first = exc.errors()[0] if exc.errors() else {}
            if first.get("type") == "json_invalid":
                reason = (first.get("ctx") or {}).get("error", "invalid JSON")
                return _error(400, f"Invalid request: the body is not valid JSON ({reason}).",
                              "invalid_json")
            if tuple(first.get("loc", ())) == ("body",) and "json" not in request.headers.get(
                    "content-type", ""):
                return _error(400, "Invalid request: send the body as a JSON object with "
                              "`Content-Type: application/json`.", "invalid_json")
            where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
            return _error(400, f"Invalid request: {first.get('msg', 'malformed body')}"
                          + (f" ({where})" if where else ""), "invalid_request", where)

        @app.exception_handler(StarletteHTTPException)
        async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
            if not _is_api(request):
                return await http_exception_handler(request, exc)
            message, code = _http_message(exc)
            return _error(exc.status_code, message, code, headers=exc.headers)

        @app.exception_handler(ChatLMError)
        async def _chatlm_error(_: Request, exc: ChatLMError) -> JSONResponse:
            return _error(exc.status_code, exc.message, exc.code)

        @app.exception_handler(Exception)
        async def _bug(request: Request, _: Exception) -> Response:
            if not _is_api(request):
                return PlainTextResponse("Internal Server Error", status_code=500)
            return _error(500, "The server failed on this request; it has been logged.",
                          "internal_error")

    async def unknown(self, request: Request) -> JSONResponse:
        """Anything under /v1 that is no route: OpenAI-shaped 404, or 405 for a wrong method."""
        path = request.url.path
        allowed = _ROUTES.get(path.removeprefix(PREFIX))
        if allowed:
            return _error(405, f"{request.method} is not allowed on {path}; use {allowed}.",
                          "method_not_allowed", headers={"Allow": allowed})
        return _error(404, f"Unknown endpoint {request.method} {path}; the API serves "
                      + ", ".join(f"{m} {PREFIX}{r}" for r, m in _ROUTES.items()) + ".", "not_found")

    async def list_models(self) -> dict[str, Any]:
        now = int(time.time())
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": now, "owned_by": "chatlm"} for m in self.models()
        ]}

    async def load_adapter(self, body: AdapterLoadRequest, request: Request) -> dict[str, Any]:
        """chatlm's own shape: load, and optionally make it the default."""
        seconds = await self._load(request, body.name, body.path, activate=body.activate)
        return {"name": body.name, "seconds": round(seconds, 3),
                "active": self.service.adapters.active, "adapters": self.service.adapters.names()}

    async def load_lora_adapter(self, body: LoadLoRAAdapterRequest, request: Request) -> PlainTextResponse:
        """vLLM's runtime endpoint: requests may name the adapter as their model from now on."""
        await self._load(request, body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    async def unload_lora_adapter(self, body: UnloadLoRAAdapterRequest, request: Request) -> PlainTextResponse:
        self._admin(request)
        if not await asyncio.to_thread(self.service.adapters.unload, body.lora_name):
            raise NotFoundError(f"No adapter named {body.lora_name!r} is loaded.")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @staticmethod
    def _admin(request: Request) -> None:
        if not request.state.actor.is_admin:
            raise PermissionDeniedError("Only an admin's key may load adapters.")

    async def _load(self, request: Request, name: str, path: str, *, activate: bool = False) -> float:
        """Admins only, and only a directory under ``<data_dir>/adapters`` (where rounds write, and
        where a deployment mounts its shared adapter storage): the server never reads a path a
        client names anywhere else."""
        self._admin(request)
        folder = (Path(self.service.settings.data_dir) / "adapters").resolve()
        if "\x00" in path:  # no file system takes it, and realpath would fail on it
            raise InputError("An adapter path cannot contain a NUL character.")
        real = Path(os.path.realpath(path))
        if folder not in real.parents:
            raise InputError(f"Only adapter directories under {folder} can be loaded (the path is "
                             "resolved on the server, links included).")
        return float(await asyncio.to_thread(self.service.adapters.load, name, str(real), activate=activate))

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Any:
        adapter = self._adapter_for(body.model)
        if body.n != 1:
            raise InputError("Only n=1 is supported.")
        max_tokens = body.max_tokens if body.max_completion_tokens is None else body.max_completion_tokens
        if max_tokens is not None and max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        params = SamplingParams(
            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, stop=stop,
            seed=body.seed, max_new_tokens=max_tokens or self.service.settings.max_new_tokens,
        ).validate().clamped(self.service.settings.max_new_tokens)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        gen = await asyncio.to_thread(self.service.generate, messages, params, adapter,
                                      actor=request.state.actor,
                                      continue_final=body.continue_final_message)
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
        """The adapter a request's model names, by the chat's own mapping (``Serving.choose``):
        the model's id is the base model, an adapter's name that adapter."""
        try:
            if model:
                return self.service.adapters.choose(BASE_MODEL if model == self.service.backend.model_id else model)
        except NotFoundError:
            pass
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
    try:
        async for delta in gen.deltas():
            yield delta
    except ChatLMError:
        return


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
