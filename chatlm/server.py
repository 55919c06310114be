"""Composition root: settings -> database -> backend -> service -> FastAPI app with the UI mounted."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatlm import compose
from chatlm.chat.turns import ChatService
from chatlm.config import Settings
from chatlm.identity.requests import Identity

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class App:
    settings: Settings
    service: ChatService
    identity: Identity
    asgi: Any
    """The FastAPI app: ``/`` is the Gradio UI, ``/v1`` the OpenAI-compatible API."""

    def close(self) -> None:
        self.service.backend.close()


def build_app(settings: Settings, backend: Any = None) -> App:
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware

    from chatlm.api import chats
    from chatlm.api.openai import OpenAIRoutes
    from chatlm.identity.requests import Who
    from chatlm.ui import guard, hf_signin, page, signin
    from chatlm.ui.chat_page import ChatPage

    services = compose.build(settings, backend)
    service, identity = services.chat, services.identity
    if settings.auth != "none" and settings.admin_name and settings.admin_password:
        identity.accounts.ensure_admin(settings.admin_name, settings.admin_password)
    # A server that starts takes over from one that died: its streaming answers end as interrupted.
    # (Another process that finishes such an answer still stores its final state over this mark.)
    if interrupted := service.mark_interrupted():
        log.warning("%d answer(s) were cut off when the last server stopped; kept as interrupted", interrupted)
    service.purge_deleted()  # deletes whose Undo window passed while no server ran
    docs = settings.api_docs  # /docs, /redoc and /openapi.json describe the API only when asked for
    api = FastAPI(title="chatlm", docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    OpenAIRoutes(service, identity).install(api)
    if settings.auth == "hf":
        hf_signin.install(api, identity)  # its routes first, under the gate's open /login paths
    if settings.auth != "none":
        signin.install(api, identity)
    who = Who(identity)
    chats.install(api, service, who)
    blocks = ChatPage(service, who, training=services.training, feedback=services.feedback).build()
    blocks.queue(default_concurrency_limit=settings.max_batch)
    guard.guard_events(blocks)
    # Nothing under the data folder (database, adapters, models) or the code is ever served or
    # copied by Gradio, whatever a request names; uploads are checked in chatlm.ui.uploads.
    blocked = [str(settings.data_dir.resolve()), str(REPO)]
    asgi = gr.mount_gradio_app(api, blocks, path="", server_name=settings.host,
                               server_port=settings.port, blocked_paths=blocked, css=page.CSS, js=page.JS,
                               app_kwargs={"openapi_url": "/openapi.json" if docs else None})
    # No cross-origin reads with credentials (Gradio's own CORS layer would allow any localhost
    # origin with cookies; it stands aside when the parent app configures CORS).
    asgi.add_middleware(CORSMiddleware, allow_origins=[], allow_credentials=False)
    asgi.add_middleware(guard.RequestGuard, identity=identity)  # outermost: before Gate and Gradio
    return App(settings=settings, service=service, identity=identity, asgi=asgi)


def serve(settings: Settings) -> None:
    """Run the UI and API until interrupted."""
    import uvicorn

    from chatlm import torch_threads

    settings.check_exposure()  # before loading anything: no open server by accident
    torch_threads.one_thread_here()  # this thread loads; decoding gets the cores (chatlm.torch_threads)
    app = build_app(settings)
    print(f"chatlm: serving {app.service.backend.model_id} on http://{settings.host}:{settings.port}",
          flush=True)
    try:
        uvicorn.run(app.asgi, host=settings.host, port=settings.port, log_level="warning")
    finally:
        app.close()
