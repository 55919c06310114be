"""The sign-in page, sign-out, and the gate in front of the UI when accounts are on.

A plain HTML form (no script) posts to ``/login``; a right password sets the signed session cookie
and goes to the app. A form posted from another site is refused (its Origin, or Referer, names
another host): no page elsewhere can sign a visitor in as someone else. Signing out is a POST too
(``GET /logout`` shows a form) and ends every session of the account on the server. The password is
checked off the event loop and its slow-down awaited, so a guesser holds up no one else.

In front of the Gradio app an ASGI middleware gives a first-time visitor a guest token signed by
the server (when guests are allowed) or sends them to the sign-in page; it decides nothing about
who may do what: every handler asks ``chatlm.identity.requests.Who`` with the request's cookies.
"""

from __future__ import annotations

import html
import os
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from chatlm.errors import ChatLMError
from chatlm.identity.accounts import Actor
from chatlm.identity.lockout import SignInError
from chatlm.identity.requests import GUEST_COOKIE, GUEST_COOKIE_DAYS, SESSION_COOKIE, Identity

OPEN_PATHS = ("/login", "/logout", "/v1")
"""Answered whatever the visitor's state: the sign-in routes and the API (its own keys)."""
MAX_FORM = 4096

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="color-scheme" content="light dark">
<title>Sign in · chatlm</title>
<style>
:root{{color-scheme:light dark;--bg:#f4f4f5;--card:#fff;--text:#18181b;--muted:#52525b;--line:#d4d4d8;
--accent:#c2410c;--accent-text:#fff;--error:#b00020}}
@media (prefers-color-scheme:dark){{:root{{--bg:#0b0f19;--card:#1f2937;--text:#f4f4f5;--muted:#a1a1aa;
--line:#374151;--accent:#f97316;--accent-text:#111;--error:#ff8a80}}}}
body{{font-family:system-ui,sans-serif;background:var(--bg);color:var(--text);margin:0;min-height:100vh;
display:flex;align-items:flex-start;justify-content:center}}
main{{background:var(--card);border:1px solid var(--line);border-radius:12px;width:100%;max-width:22rem;
margin:10vh 1rem 2rem;padding:1.5rem 1.75rem;box-sizing:border-box;box-shadow:0 1px 3px rgb(0 0 0 / .08)}}
h1{{margin:0 0 .25rem;font-size:1.6rem}}p{{color:var(--muted);line-height:1.45}}
label{{display:block;margin:.9rem 0 .3rem;font-weight:600;color:var(--text)}}
input{{width:100%;padding:.6rem .7rem;box-sizing:border-box;border:1px solid var(--line);border-radius:8px;
background:var(--bg);color:var(--text);font:inherit}}
input:focus{{outline:2px solid var(--accent);outline-offset:1px}}
button,.button{{display:block;width:100%;margin-top:1.2rem;padding:.65rem 1rem;border:0;border-radius:8px;
background:var(--accent);color:var(--accent-text);font:inherit;font-weight:600;cursor:pointer}}
a{{color:var(--accent)}}.error{{color:var(--error);font-weight:600}}
</style></head>
<body><main><h1>chatlm</h1>{body}</main></body></html>"""
SIGN_IN = "<p>Sign in to your account.</p>{error}{how}{guest}"
PASSWORD_FORM = """<form method="post" action="/login">
<label for="name">User name</label><input id="name" name="name" autocomplete="username" required value="{name}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<input type="hidden" name="keep" value="{keep}">
<button type="submit" id="sign-in">Sign in</button></form>"""
HF_BUTTON = """<form method="post" action="/login/huggingface"><input type="hidden" name="keep" value="{keep}">
<button type="submit" id="sign-in-hf" class="button">Sign in with Hugging Face</button></form>"""
SIGN_OUT = """<p>Sign out? Every browser signed in as you is signed out.</p>
<form method="post" action="/logout"><button type="submit" id="sign-out">Sign out</button></form>
<p><a href="/">Back to the chat</a></p>"""
FOREIGN = "This form was sent from another site: sign in on this site's own page."


def page(error: str = "", name: str = "", *, guests: bool, hf: bool = False, keep: str = "") -> str:
    """The sign-in page; ``keep`` is the proof of this browser's guest (``Identity.keep_proof``)."""
    how = (HF_BUTTON if hf else PASSWORD_FORM).format(name=html.escape(name), keep=html.escape(keep))
    return PAGE.format(body=SIGN_IN.format(
        error=f'<p class="error" role="alert">{html.escape(error)}</p>' if error else "", how=how,
        guest='<p><a href="/" id="as-guest">Continue as a guest</a></p>' if guests else ""))


def same_origin(request: Request) -> bool:
    """A form from one of this site's pages, or no browser at all: a present Origin (else Referer)
    must name this host, as a page elsewhere that posts a form names its own (login CSRF). A client
    that sends neither is no browser and carries no visitor's cookies."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return True
    host = urlsplit(source).netloc.lower() if source != "null" else ""
    return bool(host) and _bare(host) in _own_hosts(request)


def _own_hosts(request: Request) -> set[str]:
    """The names this server is reached by: the Host header, a proxy's forwarded host, a Space's
    host (no page elsewhere can set any of them on a visitor's request)."""
    names = [request.headers.get("host", ""), *request.headers.get("x-forwarded-host", "").split(","),
             *os.environ.get("SPACE_HOST", "").split(",")]
    return {_bare(n.strip().lower()) for n in names if n.strip()}


def _bare(host: str) -> str:
    """A host without the scheme's default port, as browsers write an Origin."""
    return host.removesuffix(":443").removesuffix(":80")


def guest_cookie(request: Request) -> str:
    return request.cookies.get(GUEST_COOKIE, "")


def signed_in(request: Request, identity: Identity, actor: Actor, keep: str = "") -> Response:
    """The end of every sign-in (password or Hugging Face): the signed session cookie, the guest's
    work kept when the sign-in came from this browser's sign-in page (``keep``, the page's proof of
    the guest cookie it saw: a cookie planted since, or one never issued here, is not adopted),
    and on to the app. Blocks on the database: call it from a thread."""
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, identity.session_value(actor),
                        **identity.cookie_options(max_age=identity.settings.session_hours * 3600))
    cookie = guest_cookie(request)
    if cookie:
        token = identity.guest_token(cookie)
        if token is not None and identity.keeps(keep, cookie):  # what this browser did as a guest
            identity.accounts.adopt_guest(token, actor)
        response.delete_cookie(GUEST_COOKIE, path="/")  # adopted or not, this browser is signed in now
    return response


def _keep_for(request: Request, identity: Identity) -> str:
    """The sign-in page's proof of the guest cookie this browser holds (none for a made-up one)."""
    cookie = guest_cookie(request)
    return identity.keep_proof(cookie) if identity.guest_token(cookie) is not None else ""


async def read_form(request: Request) -> dict[str, str] | None:
    """A posted form's first values, or None when it is larger than ``MAX_FORM``."""
    body = await request.body()
    if len(body) > MAX_FORM:
        return None
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def install(app: FastAPI, identity: Identity) -> None:
    """Add ``/login`` and ``/logout`` and put the gate in front of everything else. With
    ``CHATLM_AUTH=hf`` the server installs ``chatlm.ui.hf_signin``'s routes first; this page then
    shows its button."""
    settings = identity.settings
    hf = settings.auth == "hf"

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request) -> HTMLResponse:
        return HTMLResponse(page(guests=settings.guests_allowed, hf=hf, keep=_keep_for(request, identity)))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not same_origin(request):
            return HTMLResponse(page(FOREIGN, guests=settings.guests_allowed, hf=hf), 403)
        form = await read_form(request)
        if form is None:
            return HTMLResponse(page("The form is too large.", guests=settings.guests_allowed), 413)
        if hf:
            return HTMLResponse(page("This app signs in with Hugging Face only.",
                                     guests=settings.guests_allowed, hf=True), 400)
        name, password, keep = form.get("name", "").strip(), form.get("password", ""), form.get("keep", "")
        try:
            actor = await identity.accounts.sign_in_async(name, password)
        except (SignInError, ChatLMError) as exc:
            return HTMLResponse(page(exc.message, name, guests=settings.guests_allowed, keep=keep), 401)
        return await anyio.to_thread.run_sync(signed_in, request, identity, actor, keep)

    @app.get("/logout", include_in_schema=False)
    def logout_form(request: Request) -> Response:
        """Signing out changes state, so it is a POST (a link or image elsewhere cannot do it):
        this page is its form."""
        if identity.session_actor(request.cookies.get(SESSION_COOKIE, "")) is None:
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(PAGE.format(body=SIGN_OUT))

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        """End every session of the account (the cookie alone would leave a saved copy working),
        then forget the cookie here. Without a session it just goes to the sign-in page."""
        if not same_origin(request):
            return HTMLResponse(PAGE.format(body=f'<p class="error" role="alert">{FOREIGN}</p>'), 403)
        actor = identity.session_actor(request.cookies.get(SESSION_COOKIE, ""))
        if actor is not None:
            identity.accounts.end_sessions(actor, actor.name)
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
            guest = self.identity.guest_token(cookies.get(GUEST_COOKIE, "")) is not None
            if actor is None and not (self.identity.settings.guests_allowed and guest):
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
        if not _is_page(scope) or self.identity.guest_token(cookies.get(GUEST_COOKIE, "")) is not None:
            # only a browser opening a page becomes a guest: a script without cookies would make a
            # new guest (a user row) on every call; its calls are refused as not signed in instead,
            # and so are calls with a guest token this server never issued
            await self.app(scope, receive, send)
            return
        token = self.identity.new_guest_cookie()  # this request acts as the new guest already
        others = [part for part in headers.get(b"cookie", b"").decode("latin-1").split(";")
                  if part.strip() and part.split("=", 1)[0].strip() != GUEST_COOKIE]  # a made-up one goes
        cookie = "; ".join([*(p.strip() for p in others), f"{GUEST_COOKIE}={token}"])
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
