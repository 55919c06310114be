"""``GET /chats/{id}/export``: a conversation as a Markdown download (the sidebar's Export).

The user comes from the request's cookies or API key (``chatlm.identity.requests.Who``), never from
the URL: someone else's conversation is answered as a missing one.
"""

from __future__ import annotations

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from chatlm.chat.turns import ChatService
from chatlm.errors import ChatLMError, NotFoundError, PermissionDeniedError
from chatlm.identity.requests import Who


def install(app: FastAPI, service: ChatService, who: Who) -> None:
    @app.get("/chats/{conversation_id}/export", include_in_schema=False)
    async def export(conversation_id: int, request: Request) -> Response:
        try:
            actor = await anyio.to_thread.run_sync(who.actor, request)
            name, text = await anyio.to_thread.run_sync(service.transcript, actor, conversation_id)
        except PermissionDeniedError as exc:
            return PlainTextResponse(exc.message, status_code=401)
        except NotFoundError as exc:
            return PlainTextResponse(exc.message, status_code=404)
        except ChatLMError as exc:
            return PlainTextResponse(exc.message, status_code=400)
        return Response(text, media_type="text/markdown; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"',
                                 "Cache-Control": "no-store"})
