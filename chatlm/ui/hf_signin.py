"""Sign in with Hugging Face (``CHATLM_AUTH=hf``), ending in the same signed session cookie as a
password sign-in, so every handler still asks ``chatlm.identity.requests`` who is calling.

On a Space with ``hf_oauth: true``, Spaces sets ``OAUTH_CLIENT_ID``, ``OAUTH_CLIENT_SECRET``,
``OAUTH_SCOPES`` and ``OPENID_PROVIDER_URL``; authlib runs the authorization-code flow, as Gradio's
own OAuth does (its state in a short-lived signed cookie). Without that app, and only on a loopback
address, the routes follow Gradio's local mock of OAuth: the sign-in completes at once as the
Hugging Face user whose token this machine holds (``gradio.oauth``'s mocked profile), so the flow
can be tried without a Space. On any other address the mock is refused (``Settings.check_exposure``
refuses to start, and the callback refuses too): it would make every visitor that user.
We do not use Gradio's ``LoginButton``: Gradio itself notes it is no access control, and its
session would be a second identity beside ours.

The sign-in page's button posts a form (checked to come from this site) carrying the page's proof
of this browser's guest; the proof rides through the Hugging Face round trip in a short-lived
cookie, so the callback keeps that guest's work and no cookie planted on the way. ``GET
/login/huggingface`` still signs in, keeping no guest.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from chatlm.identity.lockout import SignInError
from chatlm.identity.requests import Identity
from chatlm.ui import signin

STATE_COOKIE = "chatlm_oauth"
STATE_MINUTES = 10
KEEP_COOKIE = "chatlm_keep"
"""The sign-in page's guest proof, kept through the Hugging Face round trip (``/login`` only)."""


def mocked_profile() -> dict[str, Any]:
    """Gradio's local mock: the profile of this machine's Hugging Face login."""
    from gradio import oauth

    return dict(oauth._get_mocked_oauth_info()["userinfo"])


def _callback_url(request: Request) -> str:
    """Spaces accept only ``https://<space host>/login/callback`` as the redirect."""
    host = os.environ.get("SPACE_HOST", "").split(",")[0].strip()
    return f"https://{host}/login/callback" if host else str(request.url_for("hf_callback"))


def install(app: FastAPI, identity: Identity) -> None:
    """Add ``/login/huggingface`` and ``/login/callback`` (under the gate's open ``/login`` paths);
    the server calls it before ``signin.install``."""
    settings = identity.settings
    client: Any = None
    if settings.hf_oauth_app:
        from authlib.integrations.starlette_client import OAuth
        from starlette.middleware.sessions import SessionMiddleware

        registry = OAuth()
        registry.register(name="huggingface", client_id=os.environ["OAUTH_CLIENT_ID"],
                          client_secret=os.environ["OAUTH_CLIENT_SECRET"],
                          client_kwargs={"scope": os.environ.get("OAUTH_SCOPES") or "openid profile"},
                          server_metadata_url=os.environ["OPENID_PROVIDER_URL"]
                          + "/.well-known/openid-configuration")
        client = registry.huggingface
        secret = hashlib.sha256((os.environ["OAUTH_CLIENT_SECRET"] + "-chatlm").encode()).hexdigest()
        app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie=STATE_COOKIE,
                           max_age=STATE_MINUTES * 60, same_site="none", https_only=True)

    def refused(message: str) -> HTMLResponse:
        return HTMLResponse(signin.page(message, guests=settings.guests_allowed, hf=True), 401)

    @app.get("/login/huggingface", include_in_schema=False)
    async def hf_start(request: Request) -> Response:
        if client is not None:
            return await client.authorize_redirect(request, _callback_url(request))
        return RedirectResponse(str(request.url_for("hf_callback")), status_code=303)

    @app.post("/login/huggingface", include_in_schema=False)
    async def hf_start_form(request: Request) -> Response:
        """The sign-in page's button: as ``GET``, with the page's guest proof kept for the callback."""
        if not signin.same_origin(request):
            return HTMLResponse(signin.page(signin.FOREIGN, guests=settings.guests_allowed, hf=True), 403)
        form = await signin.read_form(request)
        response = await hf_start(request)
        if form and form.get("keep"):
            response.set_cookie(KEEP_COOKIE, form["keep"], **{
                **identity.cookie_options(max_age=STATE_MINUTES * 60), "path": "/login"})
        return response

    @app.get("/login/callback", include_in_schema=False, name="hf_callback")
    async def hf_callback(request: Request) -> Response:
        try:
            if client is not None:
                token = await client.authorize_access_token(request)
                profile = dict(token.get("userinfo") or {})
            elif not settings.loopback:  # the mock would make every visitor this machine's user
                return refused("Hugging Face sign-in is not configured on this server (no OAuth app).")
            else:
                profile = await anyio.to_thread.run_sync(mocked_profile)
        except Exception as exc:  # authlib's errors, or no Hugging Face login on this machine
            return refused(f"Hugging Face sign-in did not complete: {exc}")
        username = str(profile.get("preferred_username") or "")
        try:
            actor = await anyio.to_thread.run_sync(identity.accounts.hf_user, username, settings.admins)
        except SignInError as exc:
            return refused(exc.message)
        response = await anyio.to_thread.run_sync(signin.signed_in, request, identity, actor,
                                                  request.cookies.get(KEEP_COOKIE, ""))
        response.delete_cookie(KEEP_COOKIE, path="/login")
        return response
