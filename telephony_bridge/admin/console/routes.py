"""The console's routes: sign-in and sign-out, the four page shells, and its static files.

Failed sign-ins are throttled per client address (`SignInThrottle`: five a minute, then 429 with `Retry-After`),
and each is logged with the address, never with what was typed.

Every answer carries a strict Content-Security-Policy: scripts, styles, media and requests only from
the bridge itself, no inline script or style, and no framing (`frame-ancestors 'none'`). The session
cookie is `HttpOnly` and `SameSite=Strict`, and `Secure` unless the console is reached on loopback
over plain HTTP (a browser would not send a `Secure` cookie back there).
"""

from __future__ import annotations

import functools
import logging
import time
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from telephony_bridge.admin.sessions import COOKIE, SESSION_S, ConsoleSession, ConsoleSessions, SignInThrottle

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
MAX_FORM_BYTES = 4096
STATIC = Path(str(resources.files("telephony_bridge") / "admin" / "console" / "static"))
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
PAGES = {"live": "Live calls", "calls": "Calls", "call": "Call", "numbers": "Numbers"}

_templates = Environment(
    loader=FileSystemLoader(str(resources.files("telephony_bridge") / "admin" / "console" / "templates")),
    autoescape=select_autoescape(["html"]),
)


def console_router(sessions: ConsoleSessions | None) -> APIRouter:
    """The routes under `/console` (`sessions` is `None` when no admin token is set: every route answers 404)."""
    router = APIRouter(prefix="/console")
    throttle = SignInThrottle()

    def signed_in(request: Request) -> ConsoleSession | None:
        if sessions is None:
            raise HTTPException(404, "Not Found")
        return sessions.session(request.cookies.get(COOKIE), time.time())

    def page(
        name: str, session: ConsoleSession | None, *, status: int = 200, call_sid: str = "", error: str = ""
    ) -> HTMLResponse:
        html = _templates.get_template(f"{name}.html").render(
            page=name, title=PAGES.get(name, "Sign in"), csrf_token=session.csrf_token if session else "",
            call_sid=call_sid, error=error,
        )
        return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    def shell(name: str, request: Request, call_sid: str = "") -> Response:
        session = signed_in(request)
        if session is None:
            return RedirectResponse("/console/sign-in", status_code=303, headers=SECURITY_HEADERS)
        return page(name, session, call_sid=call_sid)

    @router.get("/")
    async def home(request: Request) -> Response:
        signed_in(request)
        return RedirectResponse("/console/live", status_code=303, headers=SECURITY_HEADERS)

    @router.get("/sign-in")
    async def sign_in_form(request: Request) -> Response:
        signed_in(request)
        return page("sign-in", None)

    @router.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        signed_in(request)
        assert sessions is not None
        address = request.client.host if request.client else "unknown"
        now = time.monotonic()
        wait_s = throttle.retry_after(address, now)
        if wait_s is not None:
            log.warning("console sign-in from %s refused: %d failed sign-ins in %.0f s; it may try again in %d s",
                        address, throttle.limit, throttle.window_s, wait_s,
                        extra={"event": "console_sign_in_throttled", "client": address})
            refused = page("sign-in", None, status=429,
                           error=f"Too many wrong tokens from your address. Try again in {wait_s} seconds.")
            refused.headers["Retry-After"] = str(wait_s)
            return refused
        form = await _form(request)
        if not sessions.token_valid(form.get("token", "")):
            failures = throttle.failed(address, now)
            log.warning("console sign-in from %s with a wrong token (%d in the last %.0f s)", address, failures,
                        throttle.window_s, extra={"event": "console_sign_in_failed", "client": address})
            return page("sign-in", None, status=401, error="That is not the admin token.")
        throttle.succeeded(address)
        cookie, _ = sessions.issue(time.time())
        response = RedirectResponse("/console/live", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, cookie, max_age=SESSION_S, path="/", httponly=True, samesite="strict",
                            secure=_secure(request))
        return response

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        session = signed_in(request)
        assert sessions is not None
        form = await _form(request)
        if session is None or not sessions.csrf_valid(session, form.get("csrf_token")):
            raise HTTPException(403, "not signed in, or the form's CSRF token is wrong")
        sessions.revoke(session, time.time())
        response = RedirectResponse("/console/sign-in", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))
        return response

    @router.get("/live")
    async def live(request: Request) -> Response:
        return shell("live", request)

    @router.get("/calls")
    async def calls(request: Request) -> Response:
        return shell("calls", request)

    @router.get("/calls/{call_sid}")
    async def call(request: Request, call_sid: str) -> Response:
        return shell("call", request, call_sid=call_sid)

    @router.get("/numbers")
    async def numbers(request: Request) -> Response:
        return shell("numbers", request)

    @router.get("/static/{name}")
    async def static(request: Request, name: str) -> Response:
        signed_in(request)
        path = STATIC / name
        if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
            raise HTTPException(404, "Not Found")
        return Response(_static_bytes(name), media_type=STATIC_TYPES[path.suffix],
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    return router


@functools.lru_cache(maxsize=16)
def _static_bytes(name: str) -> bytes:
    """A static file, read once: they ship with the package and never change while it runs."""
    return (STATIC / name).read_bytes()


def _secure(request: Request) -> bool:
    return not (request.url.scheme == "http" and (request.url.hostname or "") in LOOPBACK_HOSTS)


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    return dict(parse_qsl(body.decode("utf-8", errors="replace")))
