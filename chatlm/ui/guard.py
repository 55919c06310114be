"""The request guard: which file a request may name, which file the server hands out, and the
headers every answer carries. One ASGI middleware in front of everything, plus one check inside
Gradio's event processing, so the rule holds for every input of every event on every route.

Why here and not in Gradio: Gradio walks every input of an event for a ``FileData`` shape
(``{"path": ..., "meta": {"_type": "gradio.FileData"}}``) and copies the named file into its cache
before a handler runs. It refuses paths outside its upload folder only once ``launch()`` has run,
and an app mounted on FastAPI (ours) never launches: a file reference typed into a text box copied
``/proc/self/environ`` or the session key where anyone could fetch it. So this module decides:

- a file reference is accepted only by a file input (``chatlm.ui.uploads.uploaded_file``) and only
  for a file inside this server's upload folder; anywhere else the request is refused (400) before
  any file is opened or copied;
- ``/gradio_api/file=`` serves only files inside the upload folder (what this server received or
  produced), never a URL or any other path;
- ``/gradio_api/upload`` takes files only from a caller who has an identity;
- every response says: no framing by other sites (a Space's huggingface.co page excepted), no
  MIME sniffing, no full referrer to other sites.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import anyio

from chatlm.ui.uploads import is_received

log = logging.getLogger(__name__)

FILE_TYPE = "gradio.FileData"
REFUSED = ("That request names a file on the server; only files uploaded through this page are "
           "accepted, and only by an upload field.")
NOT_SERVED = "File not found."
GRADIO_API = "/gradio_api"
FILE_ROUTES = (f"{GRADIO_API}/file=", f"{GRADIO_API}/file/")
UPLOAD_ROUTE = f"{GRADIO_API}/upload"
OWN_ROUTES = ("/v1", "/login", "/logout")
"""Our own routes: they read their own bodies and never hand a value to Gradio."""
MAX_BODY = 64 * 1024 * 1024
"""A JSON event body larger than this is refused unread (Gradio would read it all)."""
MAX_DEPTH = 64
"""Nesting deeper than any input of this app needs; deeper JSON is refused, not walked."""
HF_FRAMES = "https://huggingface.co https://*.huggingface.co"
"""Who may frame the app on a Space (the Space page shows it in an iframe)."""


class Refused(ValueError):
    """A request value that names a file it may not (or cannot be checked)."""


def file_paths(value: Any, depth: int = 0) -> Iterator[str]:
    """Every file reference inside a request value: a dict with a string ``path`` (Gradio's
    ``FileData``, with or without its ``meta``) or one whose meta says ``FileData``."""
    if depth > MAX_DEPTH:
        raise Refused("too deeply nested")
    if isinstance(value, dict):
        path, meta = value.get("path"), value.get("meta")
        if isinstance(path, str) or (isinstance(meta, dict) and meta.get("_type") == FILE_TYPE):
            yield path if isinstance(path, str) else ""
        for item in value.values():
            yield from file_paths(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from file_paths(item, depth + 1)


def check_body(body: bytes) -> None:
    """Refuse an event body that names any file outside the upload folder (or cannot be read)."""
    if not body.strip():
        return
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Refused("not JSON") from exc
    for path in file_paths(data):
        if not is_received(path):
            raise Refused(path)


def check_inputs(inputs: list[Any], blocks: list[Any]) -> None:
    """Inside Gradio, per input: a file reference only in an upload field, and only for a file
    the upload folder holds. ``blocks`` are the event's input components, in order."""
    for i, value in enumerate(inputs):
        paths = list(file_paths(value))
        if not paths:
            continue
        block = blocks[i] if i < len(blocks) else None
        if not getattr(block, "receives_uploads", False) or not all(is_received(p) for p in paths):
            raise Refused(", ".join(paths))


def guard_events(blocks: Any) -> None:
    """Put ``check_inputs`` in front of Gradio's preprocessing of every event of ``blocks``
    (queue, ``call/``, ``run/``, ``api/`` and streams all pass through ``preprocess_data``)."""
    import gradio as gr

    original = blocks.preprocess_data

    async def preprocess_data(block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        try:
            check_inputs(inputs, list(block_fn.inputs))
        except Refused as exc:
            log.warning("refused a file reference in %s: %s", getattr(block_fn, "api_name", "?"), exc)
            raise gr.Error(REFUSED, print_exception=False) from None
        return await original(block_fn, inputs, state, explicit_call)

    blocks.preprocess_data = preprocess_data


class RequestGuard:
    """ASGI middleware in front of the whole app (see the module docstring)."""

    def __init__(self, app: Any, identity: Any) -> None:
        self.app, self.identity = app, identity
        self.space = bool(os.environ.get("SPACE_ID"))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_headers(send)
        path, method = scope["path"], scope.get("method", "GET")
        if path.startswith(FILE_ROUTES):
            target = unquote(path[len(FILE_ROUTES[0]):])
            if not is_received(target):
                log.warning("refused to serve %r", target[:200])
                await _answer(send, 404, NOT_SERVED)
                return
        elif path.rstrip("/") == UPLOAD_ROUTE and method == "POST":
            if not await self._has_identity(scope):
                log.warning("refused an upload with no identity")
                await _answer(send, 401, "Sign in (or open the page as a guest) before uploading.")
                return
        elif method in ("POST", "PUT", "PATCH") and not path.startswith(OWN_ROUTES):
            headers = dict(scope.get("headers") or [])
            if b"multipart/" in headers.get(b"content-type", b""):
                await _answer(send, 400, REFUSED)  # only the upload route takes files
                return
            body = await _read(receive)
            if body is None:
                await _answer(send, 413, "The request is too large.")
                return
            try:
                check_body(body)
            except Refused as exc:
                log.warning("refused a file reference in %s %s: %s", method, path, str(exc)[:200])
                await _answer(send, 400, REFUSED)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _has_identity(self, scope: dict[str, Any]) -> bool:
        from chatlm.ui.signin import _cookies

        headers = dict(scope.get("headers") or [])
        cookies = _cookies(headers.get(b"cookie", b"").decode("latin-1"))
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        actor = await anyio.to_thread.run_sync(self.identity.actor, cookies, authorization)
        return actor is not None

    def _with_headers(self, send: Any) -> Callable[[dict[str, Any]], Any]:
        extra = security_headers(space=self.space)

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((k, v) for k, v in extra if k not in have)]}
            await send(message)

        return sending


def security_headers(*, space: bool) -> list[tuple[bytes, bytes]]:
    """What every answer carries. A Space is shown in an iframe of huggingface.co, so there it may
    be framed by that site alone; elsewhere by no one."""
    frames = f"frame-ancestors {HF_FRAMES}" if space else "frame-ancestors 'none'"
    headers = [(b"content-security-policy", frames.encode()), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"same-origin")]
    if not space:
        headers.append((b"x-frame-options", b"DENY"))
    return headers


async def _read(receive: Any) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, original: Any) -> Callable[[], Any]:
    """A ``receive`` that hands the already-read body on, then the real one (a disconnect)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive


async def _answer(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message, "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
