"""The sign-in page, sign-out, and the gate in front of the UI when accounts are on.

A plain HTML form (no script) posts to ``/login``; a right password sets the signed session cookie
and goes to the app. In front of the Gradio app an ASGI middleware gives a first-time visitor a
guest token (when guests are allowed) or sends them to the sign-in page; it decides nothing about
who may do what: every handler asks ``chatlm.ui.who`` with the request's cookies.
"""

from __future__ import annotations

import html
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from chatlm.accounts import Actor, SignInError, new_guest_token
from chatlm.errors import ChatLMError
from chatlm.identity import GUEST_COOKIE, GUEST_COOKIE_DAYS, SESSION_COOKIE, Identity

OPEN_PATHS = ("/login", "/logout", "/v1")
"""Answered whatever the visitor's state: the sign-in routes and the API (its own keys)."""
MAX_FORM = 4096

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Sign in · chatlm</title>
<style>body{{font-family:system-ui,sans-serif;max-width:22rem;margin:10vh auto;padding:0 1rem}}
label{{display:block;margin:.8rem 0 .2rem}}input{{width:100%;padding:.5rem;box-sizing:border-box}}
button,.button{{display:inline-block;margin-top:1rem;padding:.5rem 1rem}}.error{{color:#b00020}}</style></head>
<body><h1>chatlm</h1><p>Sign in to your account.</p>{error}{how}{guest}</body></html>"""
PASSWORD_FORM = """<form method="post" action="/login">
<label for="name">User name</label><input id="name" name="name" autocomplete="username" required value="{name}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" id="sign-in">Sign in</button></form>"""
HF_BUTTON = ('<p><a href="/login/huggingface" id="sign-in-hf" class="button">Sign in with Hugging Face</a>'
             '</p>')


def page(error: str = "", name: str = "", *, guests: bool, hf: bool = False) -> str:
    return PAGE.format(error=f'<p class="error" role="alert">{html.escape(error)}</p>' if error else "",
                       how=HF_BUTTON if hf else PASSWORD_FORM.format(name=html.escape(name)),
                       guest='<p><a href="/" id="as-guest">Continue as a guest</a></p>' if guests else "")


def signed_in(request: Request, identity: Identity, actor: Actor) -> Response:
    """The end of every sign-in (password or Hugging Face): the signed session cookie, the guest's
    work kept, and on to the app."""
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, identity.session_value(actor),
                        **identity.cookie_options(max_age=identity.settings.session_hours * 3600))
    if request.cookies.get(GUEST_COOKIE):  # what this browser did as a guest is kept
        identity.accounts.adopt_guest(request.cookies[GUEST_COOKIE], actor)
        response.delete_cookie(GUEST_COOKIE, path="/")
    return response


def install(app: FastAPI, identity: Identity) -> None:
    """Add ``/login`` and ``/logout`` and put the gate in front of everything else."""
    settings = identity.settings
    hf = settings.auth == "hf"
    if hf:
        from chatlm.ui import hf_signin

        hf_signin.install(app, identity)

    @app.get("/login", include_in_schema=False)
    def login_form() -> HTMLResponse:
        return HTMLResponse(page(guests=settings.guests_allowed, hf=hf))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_FORM:
            return HTMLResponse(page("The form is too large.", guests=settings.guests_allowed), 413)
        if hf:
            return HTMLResponse(page("This app signs in with Hugging Face only.",
                                     guests=settings.guests_allowed, hf=True), 400)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        name, password = form.get("name", "").strip(), form.get("password", "")
        try:
            actor = identity.accounts.sign_in(name, password)
        except (SignInError, ChatLMError) as exc:
            return HTMLResponse(page(exc.message, name, guests=settings.guests_allowed), 401)
        return signed_in(request, identity, actor)

    @app.api_route("/logout", methods=["GET", "POST"], include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    app.add_middleware(Gate, identity=identity)


class Gate:
    """ASGI middleware: signed in, or a guest (given a token on their first page), or sent to sign in."""

    def __init__(self, app: Any, identity: Identity) -> None:
        self.app, self.identity = app, identity

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        cookies = _cookies(headers.get(b"cookie", b"").decode("latin-1"))
        if SESSION_COOKIE in cookies and _is_page(scope):  # an ended session sees the sign-in page
            actor = await anyio.to_thread.run_sync(self.identity.session_actor, cookies[SESSION_COOKIE])
            if actor is None and not (self.identity.settings.guests_allowed and GUEST_COOKIE in cookies):
                response = RedirectResponse("/login", status_code=303)
                response.delete_cookie(SESSION_COOKIE, path="/")
                await response(scope, receive, send)
                return
        if SESSION_COOKIE in cookies or b"authorization" in headers:
            await self.app(scope, receive, send)  # checked by the handlers (an ended one fails there)
            return
        if not self.identity.settings.guests_allowed:
            await self._sign_in_first(scope, send)
            return
        if GUEST_COOKIE in cookies or not _is_page(scope):
            # only a browser opening a page becomes a guest: a script without cookies would make a
            # new guest (a user row) on every call; its calls are refused as not signed in instead
            await self.app(scope, receive, send)
            return
        token = new_guest_token()  # this request acts as the new guest already; the browser keeps it
        existing = headers.get(b"cookie", b"").decode("latin-1")
        cookie = f"{existing}; {GUEST_COOKIE}={token}" if existing.strip() else f"{GUEST_COOKIE}={token}"
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"cookie"]
                 + [(b"cookie", cookie.encode("latin-1"))]}
        set_cookie = _set_cookie(GUEST_COOKIE, token, self.identity.cookie_options(
            max_age=GUEST_COOKIE_DAYS * 86400))

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", set_cookie)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    @staticmethod
    async def _sign_in_first(scope: dict[str, Any], send: Any) -> None:
        if _is_page(scope):
            response: Response = RedirectResponse("/login", status_code=303)
        else:
            response = Response('{"error": "Sign in first (POST /login), or send an API key."}',
                                status_code=401, media_type="application/json")
        await response(scope, None, send)  # type: ignore[arg-type]


def _is_page(scope: dict[str, Any]) -> bool:
    """A browser asking for a page (not the app's API calls, which get a JSON refusal)."""
    accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
    return scope.get("method") == "GET" and "text/html" in accept


def _cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:
        return {}
    return {k: m.value for k, m in jar.items()}


def _set_cookie(name: str, value: str, options: dict[str, Any]) -> bytes:
    parts = [f"{name}={value}", f"Max-Age={options['max_age']}", f"Path={options['path']}", "HttpOnly",
             f"SameSite={options['samesite'].capitalize()}"]
    if options.get("secure"):
        parts.append("Secure")
    return "; ".join(parts).encode("latin-1")
