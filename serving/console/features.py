"""Console pages for features and the override editor. Every change goes through the engine's
override API with the admin API's tenant check (serving/admin.py), so the console can do
nothing a tenant's key could not do over HTTP."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from featurelm.engine import RunOptions
from featurelm.engine.errors import ContractError, FeaturelmError, InputError, NotFoundError
from featurelm.engine.loader import LoadedFeature
from featurelm.serving.admin import VersionNumber
from featurelm.serving.auth import check_tenant
from featurelm.serving.console.schema_view import fields_of
from featurelm.serving.console.web import (
    ConsoleRoute,
    Ctx,
    checked_form,
    context,
    need_tenant,
    page,
    problem_lines,
    redirect,
)
from featurelm.serving.state import services

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)
#: Versions shown in the history, newest first.
HISTORY = 20
#: Longest override text the editor sends (the engine caps YAML size again).
MAX_TEXT = 256 * 1024


def _feature(ctx: Ctx, name: str) -> LoadedFeature:
    found = services(ctx.request).engine.feature(name)
    if found is None:
        raise NotFoundError(f"unknown feature {name!r}")
    return found


async def _active(ctx: Ctx) -> dict[str, int]:
    """Feature -> active override version, for the tenant the console acts for."""
    if ctx.tenant is None:
        return {}
    check_tenant(ctx.caller, ctx.tenant)
    versions = await services(ctx.request).engine.overrides.list_versions(ctx.tenant)
    return {v.feature: v.version for v in versions if v.active}


@router.get("/features", response_class=HTMLResponse)
async def feature_list(request: Request) -> HTMLResponse:
    ctx = await context(request)
    engine = services(request).engine
    return page(ctx, "features.html", features=engine.features(), active=await _active(ctx))


@router.get("/features/{name}", response_class=HTMLResponse)
async def feature_page(request: Request, name: str) -> HTMLResponse:
    ctx = await context(request)
    base = _feature(ctx, name)
    engine = services(request).engine
    effective = await engine.resolve(name, ctx.tenant)
    return page(ctx, "feature.html", feature=base, effective=effective,
                input_fields=fields_of(base.spec.input),
                output_fields=fields_of(base.spec.output),
                examples=[(json.dumps(e.input, indent=2, ensure_ascii=False),
                           json.dumps(e.output, indent=2, ensure_ascii=False))
                          for e in base.spec.examples])


# -- the override editor -----------------------------------------------------------------------

def _skeleton(feature: LoadedFeature) -> str:
    """The overridable keys with the base feature's values: a starting point to edit."""
    spec = feature.spec.model_dump(mode="json", exclude_none=True)
    out: dict[str, Any] = {}
    for key in feature.spec.overridable:
        node: Any = spec
        parts = str(key).split(".")
        for part in parts:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            continue
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = node
    return yaml.safe_dump(out, sort_keys=False, allow_unicode=True, width=88)


@dataclass
class Version:
    version: int
    author: str
    created_at: str
    active: bool
    diff: str


async def _history(ctx: Ctx, tenant: str, name: str) -> tuple[list[Version], str | None]:
    """Versions newest first, each with its diff from the one before; the active text."""
    overrides = services(ctx.request).engine.overrides
    versions = sorted(await overrides.list_versions(tenant, name), key=lambda v: v.version,
                      reverse=True)[:HISTORY]
    shown = []
    for i, v in enumerate(versions):
        before = versions[i + 1].version if i + 1 < len(versions) else None
        diff = await overrides.diff(tenant, name, before, v.version) if before else ""
        shown.append(Version(v.version, v.author, v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                             v.active, diff))
    active_text = None
    if (active := next((v for v in versions if v.active), None)) is not None:
        store = await services(ctx.request).engine.store()
        stored = await store.get_version(tenant, name, active.version)
        active_text = stored.yaml_text if stored else None
    return shown, active_text


async def _editor(ctx: Ctx, name: str, *, status: int = 200, text: str | None = None,
                  **values: Any) -> HTMLResponse:
    tenant = need_tenant(ctx)
    check_tenant(ctx.caller, tenant)
    feature = _feature(ctx, name)
    history, active_text = await _history(ctx, tenant, name)
    if text is None:
        text = active_text if active_text is not None else _skeleton(feature)
    return page(ctx, "override.html", status, feature=feature, tenant=tenant, text=text,
                history=history, gated=feature.spec.evals.dataset is not None,
                typed_input=values.pop("typed_input", ""), **values)


@router.get("/features/{name}/override", response_class=HTMLResponse)
async def override_editor(request: Request, name: str, saved: int | None = None,
                          rolled_back: int | None = None) -> HTMLResponse:
    ctx = await context(request)
    return await _editor(ctx, name, saved=saved, rolled_back=rolled_back)


def _text(fields: dict[str, str]) -> str:
    text = fields.get("override", "")
    if len(text) > MAX_TEXT:
        raise InputError(f"the override is over {MAX_TEXT // 1024} KiB")
    return text.replace("\r\n", "\n")


@router.post("/features/{name}/override/check", response_class=HTMLResponse)
async def override_check(request: Request, name: str) -> HTMLResponse:
    """Validation as you type: the offline check (`featurelm override check`), every problem
    with its line; nothing is saved and no model is called."""
    from featurelm.engine.override_check import check_override

    ctx = await context(request)
    fields = await checked_form(request, ctx.session)
    need_tenant(ctx)
    _feature(ctx, name)
    engine = services(request).engine
    found = await asyncio.to_thread(check_override, engine.overrides, name, _text(fields),
                                    file="override")
    return page(ctx, "_check.html", problems=[str(p).removeprefix("override: ")
                                              for p in found])


@dataclass
class Run:
    label: str
    input: str
    output: str | None
    error: list[str]


async def _run_all(ctx: Ctx, tenant: str, candidate: LoadedFeature,
                   inputs: list[tuple[str, Any]]) -> list[Run]:
    engine = services(ctx.request).engine
    runs = []
    for i, (label, value) in enumerate(inputs):
        # Labelled as an eval case: a dry run is not a production call, so it is never
        # traced, and it neither reads nor fills the result cache.
        options = RunOptions(cache_read=False, cache_write=False, coalesce=False,
                             labels={"case": f"console-dry-run-{i}", "feature": candidate.name})
        shown = json.dumps(value, indent=2, ensure_ascii=False)
        try:
            result = await engine.run_feature(candidate, value, tenant=tenant, options=options)
        except FeaturelmError as exc:
            runs.append(Run(label, shown, None, problem_lines(exc)))
        else:
            runs.append(Run(label, shown, json.dumps(result.output, indent=2,
                                                     ensure_ascii=False), []))
    return runs


@router.post("/features/{name}/override/dry-run", response_class=HTMLResponse)
async def override_dry_run(request: Request, name: str) -> HTMLResponse:
    """The rendered prompt for each example, and the outputs the candidate gives for them and
    for the input typed in; nothing is saved."""
    ctx = await context(request)
    fields = await checked_form(request, ctx.session)
    tenant = need_tenant(ctx)
    check_tenant(ctx.caller, tenant)
    text, typed = _text(fields), fields.get("input", "").strip()
    engine = services(request).engine
    try:
        result = await engine.overrides.apply(tenant, name, text, author=ctx.caller.actor,
                                              dry_run=True)
        inputs: list[tuple[str, Any]] = [(f"Example {i + 1}", e.input) for i, e in
                                         enumerate(_feature(ctx, name).spec.examples)]
        if typed:
            try:
                inputs.append(("Your input", json.loads(typed)))
            except ValueError as exc:
                raise InputError(f"your input is not valid JSON: {exc}") from None
        candidate = await asyncio.to_thread(engine.overrides.build, tenant, name, text)
        runs = await _run_all(ctx, tenant, candidate, inputs)
    except (ContractError, InputError) as exc:
        return await _editor(ctx, name, status=422, text=text, typed_input=typed,
                             dry_run_error=problem_lines(exc))
    return await _editor(ctx, name, text=text, typed_input=typed, rendered=result.rendered,
                         runs=runs)


@router.post("/features/{name}/override/activate", response_model=None)
async def override_activate(request: Request, name: str) -> HTMLResponse | RedirectResponse:
    """Save and activate, through the eval gate when the feature has eval cases."""
    ctx = await context(request)
    fields = await checked_form(request, ctx.session)
    tenant = need_tenant(ctx)
    check_tenant(ctx.caller, tenant)
    text = _text(fields)
    feature = _feature(ctx, name)
    try:
        result = await services(request).engine.overrides.apply(
            tenant, name, text, author=ctx.caller.actor,
            run_evals=feature.spec.evals.dataset is not None)
    except ContractError as exc:
        return await _editor(ctx, name, status=422, text=text, refused=problem_lines(exc))
    return redirect(f"/features/{name}/override?saved={result.version}")


@router.post("/features/{name}/override/versions/{version}/rollback", response_model=None)
async def override_rollback(request: Request, name: str,
                            version: VersionNumber) -> RedirectResponse:
    ctx = await context(request)
    await checked_form(request, ctx.session)
    tenant = need_tenant(ctx)
    check_tenant(ctx.caller, tenant)
    await services(request).engine.overrides.rollback(tenant, name, version,
                                                      author=ctx.caller.actor)
    return redirect(f"/features/{name}/override?rolled_back={version}")


@router.post("/features/{name}/override/deactivate", response_model=None)
async def override_deactivate(request: Request, name: str) -> RedirectResponse:
    """Serve the base feature again; the versions are kept."""
    ctx = await context(request)
    await checked_form(request, ctx.session)
    tenant = need_tenant(ctx)
    check_tenant(ctx.caller, tenant)
    await services(request).engine.overrides.deactivate(tenant, name, author=ctx.caller.actor)
    return redirect(f"/features/{name}/override")
