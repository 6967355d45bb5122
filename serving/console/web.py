"""What every console page shares: who is asking (the HTTP API's own authentication, from the
session's key), CSRF checks, form bodies, the page headers (CSP and friends) and error pages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from featurelm.engine.errors import (
    ContractError,
    FeaturelmError,
    ForbiddenError,
    InputError,
    UnauthorizedError,
)
from featurelm.serving.auth import ANONYMOUS, Caller, resolve_caller
from featurelm.serving.console.sessions import COOKIE, Session, Sessions
from featurelm.serving.state import services

log = logging.getLogger("featurelm.console")

PREFIX = "/console"
#: Only this server's own files: no inline script or style, no other host, no framing.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}
#: Most fields a console form may send (a form is a handful of fields).
MAX_FIELDS = 32

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


class SignInNeeded(Exception):
    """No usable key in the session while the server requires one."""


@dataclass(frozen=True)
class Ctx:
    """One console request: its session, the caller the HTTP API would see, and the tenant
    the pages act for (a tenant key: its own; the admin: the one chosen; else none)."""

    request: Request
    session: Session
    caller: Caller
    tenant: str | None

    @property
    def auth_off(self) -> bool:
        return services(self.request).engine.config.auth == "off"


def sessions(request: Request) -> Sessions:
    found: Sessions = request.app.state.console_sessions
    return found


def session_of(request: Request) -> Session:
    """The request's session, a fresh anonymous one when it has none (its cookie is set on
    the response)."""
    store = sessions(request)
    session = store.get(request.cookies.get(COOKIE)) or store.new()
    request.state.console_session = session
    return session


async def context(request: Request) -> Ctx:
    """Who is asking, resolved exactly as the HTTP API resolves `Authorization: Bearer`."""
    session = session_of(request)
    svc = services(request)
    if session.api_key is None:
        if svc.engine.config.auth != "off":
            raise SignInNeeded
        return Ctx(request, session, ANONYMOUS, None)
    try:
        caller = await resolve_caller(svc, f"Bearer {session.api_key}")
    except UnauthorizedError:
        sessions(request).drop(session.id)  # the key was revoked meanwhile
        request.state.console_session = sessions(request).new()
        raise SignInNeeded from None
    tenant = session.tenant if caller.admin else caller.tenant
    return Ctx(request, session, caller, tenant)


def need_tenant(ctx: Ctx) -> str:
    if ctx.tenant is None:
        raise ForbiddenError("overrides belong to a tenant: sign in with a tenant's key, or "
                             "as the admin choose a tenant")
    return ctx.tenant


async def form(request: Request) -> dict[str, str]:
    """A URL-encoded form body (what browsers and htmx send), last value of each name."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InputError("console forms are sent as application/x-www-form-urlencoded")
    try:
        text = (await request.body()).decode("utf-8")
        return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS,
                              errors="strict"))
    except (UnicodeDecodeError, ValueError):
        raise InputError("the form is not valid UTF-8 URL-encoded text") from None


async def checked_form(request: Request, session: Session) -> dict[str, str]:
    """The form of a change, refused unless it carries the session's CSRF token."""
    fields = await form(request)
    token = fields.pop("csrf", None) or request.headers.get("x-csrf-token")
    if not session.csrf_ok(token):
        raise ForbiddenError("the form's CSRF token is missing or stale: reload the page")
    return fields


def page(ctx: Ctx | Request, template: str, status_code: int = 200,
         **values: Any) -> HTMLResponse:
    request = ctx.request if isinstance(ctx, Ctx) else ctx
    session: Session | None = getattr(request.state, "console_session", None)
    base = {"ctx": ctx if isinstance(ctx, Ctx) else None, "csrf": session.csrf if session else "",
            "prefix": PREFIX, "quote": quote}
    response: HTMLResponse = templates.TemplateResponse(request, template,
                                                        {**base, **values}, status_code=status_code)
    return response


def redirect(path: str) -> RedirectResponse:
    return RedirectResponse(PREFIX + path, status_code=303)


def problem_lines(error: FeaturelmError) -> list[str]:
    """An error as lines a person reads: every issue of a contract or input error."""
    items = error.public_detail().get("errors")
    items = items if isinstance(items, list) else []
    # A contract error's message is its issues joined; others have a message of their own.
    lines = [] if isinstance(error, ContractError) and items else [
        str(error) or error.title or type(error).__name__]
    for item in items:
        if not isinstance(item, Mapping):
            lines.append(str(item))
            continue
        where = item.get("path") or ""
        text = item.get("problem") or item.get("message") or ""
        fix = f" (fix: {item['fix']})" if item.get("fix") else ""
        lines.append(f"{where}: {text}{fix}" if where else f"{text}{fix}")
    return lines


class ConsoleRoute(APIRoute):
    """Console handlers answer HTML: sign-in redirects, error pages instead of problem+json,
    the console's security headers and the session cookie on every response."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInNeeded:
                response = redirect("/sign-in")
            except FeaturelmError as exc:
                response = page(request, "error.html", exc.status, status=exc.status,
                                title=exc.title or type(exc).__name__.removesuffix("Error"),
                                lines=problem_lines(exc))
            for name, value in HEADERS.items():
                response.headers.setdefault(name, value)
            session: Session | None = getattr(request.state, "console_session", None)
            if session is not None:
                response.set_cookie(COOKIE, session.id, max_age=int(sessions(request).idle_s),
                                    path=PREFIX, secure=True, httponly=True, samesite="strict")
            return response

        return handle
