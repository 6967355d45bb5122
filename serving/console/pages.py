"""Console sign-in and sign-out, the admin's choice of tenant, and the calls pages (traces and
feedback). The calls pages call the HTTP API's own handlers (serving/calls.py), so they read
and write exactly what the caller's key may over HTTP."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from featurelm.engine.errors import InputError, NotFoundError, UnauthorizedError
from featurelm.serving import calls
from featurelm.serving.auth import resolve_caller
from featurelm.serving.console.web import (
    ConsoleRoute,
    SignInNeeded,
    checked_form,
    context,
    page,
    redirect,
    session_of,
    sessions,
)
from featurelm.serving.state import services

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)
#: Longest API key accepted from the form (keys are far shorter).
MAX_KEY = 512


@router.get("/", response_model=None)
async def home(request: Request) -> RedirectResponse:
    return redirect("/features")


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request) -> HTMLResponse:
    session_of(request)
    return page(request, "sign_in.html",
                auth_off=services(request).engine.config.auth == "off")


@router.post("/sign-in", response_model=None)
async def sign_in(request: Request) -> HTMLResponse | RedirectResponse:
    session = session_of(request)
    fields = await checked_form(request, session)
    key = fields.get("api_key", "").strip()
    svc = services(request)
    try:
        if not key or len(key) > MAX_KEY or not key.isprintable() or " " in key:
            raise UnauthorizedError("unknown API key")
        caller = await resolve_caller(svc, f"Bearer {key}")
    except UnauthorizedError:
        return page(request, "sign_in.html", 401, error="That API key is not known here.",
                    auth_off=svc.engine.config.auth == "off")
    # A new session id at sign-in: one seen before it (fixation) is worth nothing after.
    sessions(request).drop(session.id)
    request.state.console_session = sessions(request).new(api_key=key)
    return redirect("/features" if not caller.admin else "/tenants")


@router.post("/sign-out", response_model=None)
async def sign_out(request: Request) -> RedirectResponse:
    session = session_of(request)
    await checked_form(request, session)
    sessions(request).drop(session.id)
    request.state.console_session = sessions(request).new()
    return redirect("/sign-in")


@router.get("/tenants", response_class=HTMLResponse)
async def tenants_page(request: Request) -> HTMLResponse:
    """The admin's tenants, to choose which one the pages act for."""
    ctx = await context(request)
    if not ctx.caller.admin:
        return page(ctx, "error.html", 403, status=403, title="Forbidden",
                    lines=["only the admin key lists tenants"])
    store = await services(request).engine.store()
    return page(ctx, "tenants.html", tenants=await store.list_tenants())


@router.post("/tenants", response_model=None)
async def choose_tenant(request: Request) -> RedirectResponse:
    ctx = await context(request)
    fields = await checked_form(request, ctx.session)
    if not ctx.caller.admin:
        raise SignInNeeded
    name = fields.get("tenant") or None
    store = await services(request).engine.store()
    if name is not None and await store.get_tenant(name) is None:
        raise NotFoundError(f"unknown tenant {name!r}")
    ctx.session.tenant = name
    return redirect("/features")


# -- calls -------------------------------------------------------------------------------------

@router.get("/calls", response_class=HTMLResponse)
async def calls_page(request: Request, feature: str = "", status: str = "", since: str = "",
                     tenant: str = "", cursor: int | None = None) -> HTMLResponse:
    ctx = await context(request)
    filters = {"feature": feature, "status": status, "since": since, "tenant": tenant}
    try:
        found = await calls.list_calls(
            request, ctx.caller, feature=feature or None, status=_choice(status, "ok", "error"),
            since=since or None, tenant=(tenant or None) if ctx.caller.admin else None,
            limit=50, cursor=cursor)
        error: list[str] = []
    except InputError as exc:
        found, error = {"calls": [], "next": None}, [str(exc)]
    return page(ctx, "calls.html", calls=found["calls"], next=found["next"], filters=filters,
                features=services(request).engine.feature_names(), error=error)


def _choice(value: str, *allowed: str) -> str | None:
    if value and value not in allowed:
        raise InputError(f"status is one of {', '.join(allowed)}")
    return value or None


@router.get("/calls/{request_id}", response_class=HTMLResponse)
async def call_page(request: Request, request_id: str,
                    feedback: int | None = None) -> HTMLResponse:
    ctx = await context(request)
    if len(request_id) > 64:
        raise NotFoundError("no traced call with that request id")
    found = await calls.get_call(request, ctx.caller, request_id)
    return page(ctx, "call.html", request_id=request_id, traces=found["calls"],
                feedback=feedback, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@router.post("/calls/{request_id}/feedback", response_model=None)
async def call_feedback(request: Request, request_id: str) -> RedirectResponse:
    """Feedback through the feedback API's own handler (its checks and metrics)."""
    ctx = await context(request)
    fields = await checked_form(request, ctx.session)
    body: dict[str, Any] = {"request_id": request_id, "comment": fields.get("comment", "")}
    if fields.get("score"):
        body["score"] = fields["score"]
    if fields.get("label"):
        body["label"] = fields["label"]
    if fields.get("correction", "").strip():
        try:
            body["correction"] = json.loads(fields["correction"])
        except ValueError as exc:
            raise InputError(f"the correction is not valid JSON: {exc}") from None
    try:
        feedback = calls.FeedbackIn.model_validate(body)
    except ValidationError as exc:
        raise InputError("the feedback was refused: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())) from None
    await calls.post_feedback(feedback, request, ctx.caller)
    return redirect(f"/calls/{request_id}?feedback=1")
