"""The tenant admin API: tenants (admin keys only) and per-tenant overrides, mirroring
`featurelm override ...`. A tenant key manages only its own overrides; naming another tenant
answers 404, exactly as if that tenant did not exist."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from featurelm.engine.contracts import NAME_PATTERN, TENANT_NAME
from featurelm.engine.errors import InputError, NotFoundError
from featurelm.serving import problems
from featurelm.serving.auth import AdminCaller, KeyCaller, check_tenant
from featurelm.serving.models import (
    ApplyOut,
    DiffOut,
    OverrideVersionList,
    OverrideVersionOut,
    OverrideVersionText,
    RenderedMessage,
    TenantCreate,
    TenantCreated,
    TenantList,
    TenantOut,
)
from featurelm.serving.state import services

if TYPE_CHECKING:
    from featurelm.engine.store import OverrideVersion  # the store (SQLAlchemy) loads on first use

router = APIRouter(tags=["admin"])

TenantName = Annotated[str, Path(pattern=f"^{TENANT_NAME.pattern}$",
                                 description="Tenant name.")]
FeatureName = Annotated[str, Path(pattern=NAME_PATTERN, description="Feature name.")]
#: Versions are positive database integers; anything larger cannot exist.
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1)]
OVERRIDES = "/v1/tenants/{tenant}/overrides"
ONE = OVERRIDES + "/{feature}"
ERRORS = problems.responses(401, 404, 422)


def _out(v: OverrideVersion) -> OverrideVersionOut:
    return OverrideVersionOut(tenant=v.tenant, feature=v.feature, version=v.version,
                              content_hash=v.content_hash, author=v.author,
                              created_at=v.created_at, active=v.active)


@router.get("/v1/tenants", response_model=TenantList, responses=problems.responses(401, 403))
async def list_tenants(request: Request, caller: AdminCaller) -> TenantList:
    store = await services(request).engine.store()
    return TenantList(tenants=[TenantOut(name=t.name, created_at=t.created_at)
                               for t in await store.list_tenants()])


@router.post("/v1/tenants", status_code=201, response_model=TenantCreated,
             responses=problems.responses(401, 403, 409, 422))
async def create_tenant(body: TenantCreate, request: Request,
                        caller: AdminCaller) -> TenantCreated:
    store = await services(request).engine.store()
    tenant, key = await store.create_tenant(body.name, actor=caller.actor)
    return TenantCreated(name=tenant.name, api_key=key)


@router.get(OVERRIDES, response_model=OverrideVersionList, responses=ERRORS)
async def list_all_versions(tenant: TenantName, request: Request,
                            caller: KeyCaller) -> OverrideVersionList:
    check_tenant(caller, tenant)
    versions = await services(request).engine.overrides.list_versions(tenant)
    return OverrideVersionList(versions=[_out(v) for v in versions])


@router.put(ONE, response_model=ApplyOut, responses={
    **ERRORS, 201: {"description": "Saved (and active) as a new version",
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/ApplyOut"}}}}},
    openapi_extra={"requestBody": {
        "required": True,
        "description": "The override: YAML text, or the same mapping as a JSON object (kept "
                       "as YAML). `GET /v1/features/{name}/override-schema` describes it.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Override"}},
                    # Raw bytes, as OpenAPI describes any upload, so generators that map
                    # application/yaml to a byte body (docs/http.md) type it as a file.
                    "application/yaml": {"schema": {"type": "string",
                                                    "format": "binary"}}}}})
async def apply_override(tenant: TenantName, feature: FeatureName, request: Request,
                         caller: KeyCaller, response: Response,
                         dry_run: Annotated[bool, Query(description="Validate and render "
                                                                    "only; save nothing.")]
                         = False,
                         run_evals: Annotated[bool, Query(description="Refuse if the eval "
                                                                      "cases fail.")]
                         = False) -> ApplyOut:
    check_tenant(caller, tenant)
    text = _override_text(await request.body(), request.headers.get("content-type", ""))
    result = await services(request).engine.overrides.apply(
        tenant, feature, text, author=caller.actor, dry_run=dry_run, run_evals=run_evals)
    if not result.dry_run:
        response.status_code = 201
    return ApplyOut(version=result.version, active=result.active, dry_run=result.dry_run,
                    rendered=[[RenderedMessage(**m) for m in messages]
                              for messages in result.rendered],
                    eval_pass_rate=result.eval_pass_rate)


@router.get("/v1/features/{feature}/override-schema", response_model=None, responses={
    **problems.responses(401, 404, 422),
    200: {"description": "A JSON Schema (2020-12) for the feature's override files",
          "content": {"application/json": {"schema": {
              "$ref": "#/components/schemas/OverrideSchema"}}}}})
async def override_schema_of(feature: FeatureName, request: Request,
                             caller: KeyCaller) -> dict[str, Any]:
    """The JSON Schema of this feature's override files: only its overridable keys."""
    from featurelm.engine.override_schema import override_schema

    loaded = services(request).engine.feature(feature)
    if loaded is None:
        raise NotFoundError(f"unknown feature {feature!r}")
    return override_schema(loaded.spec)


def _override_text(body: bytes, content_type: str) -> str:
    """The override as YAML text; a JSON object body is stored as the equivalent YAML, so
    versions read and diff alike however they were uploaded."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the override must be UTF-8 text (YAML or JSON)") from None
    if content_type.split(";")[0].strip().lower() != "application/json":
        return text
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"the override is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError("a JSON override must be an object, as the YAML one is a mapping")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@router.get(ONE, response_model=OverrideVersionList, responses=ERRORS)
async def list_versions(tenant: TenantName, feature: FeatureName, request: Request,
                        caller: KeyCaller) -> OverrideVersionList:
    check_tenant(caller, tenant)
    versions = await services(request).engine.overrides.list_versions(tenant, feature)
    return OverrideVersionList(versions=[_out(v) for v in versions])


@router.delete(ONE, status_code=204, response_class=Response, responses=ERRORS)
async def deactivate(tenant: TenantName, feature: FeatureName, request: Request,
                     caller: KeyCaller) -> Response:
    """Serve the base feature again (the versions are kept)."""
    check_tenant(caller, tenant)
    await services(request).engine.overrides.deactivate(tenant, feature, author=caller.actor)
    return Response(status_code=204)


@router.get(ONE + "/versions/{version}", response_model=OverrideVersionText, responses=ERRORS)
async def get_version(tenant: TenantName, feature: FeatureName, version: VersionNumber,
                      request: Request, caller: KeyCaller) -> OverrideVersionText:
    check_tenant(caller, tenant)
    store = await services(request).engine.store()
    stored = await store.get_version(tenant, feature, version)
    if stored is None:
        raise NotFoundError(f"no version {version} of {feature!r} for {tenant!r}")
    return OverrideVersionText(**_out(stored).model_dump(), yaml_text=stored.yaml_text)


@router.post(ONE + "/versions/{version}/activate", response_model=OverrideVersionOut,
             responses=ERRORS)
async def activate(tenant: TenantName, feature: FeatureName, version: VersionNumber,
                   request: Request, caller: KeyCaller) -> OverrideVersionOut:
    check_tenant(caller, tenant)
    return _out(await services(request).engine.overrides.activate(
        tenant, feature, version, author=caller.actor))


@router.post(ONE + "/versions/{version}/rollback", response_model=OverrideVersionOut,
             responses=ERRORS)
async def rollback(tenant: TenantName, feature: FeatureName, version: VersionNumber,
                   request: Request, caller: KeyCaller) -> OverrideVersionOut:
    """Make an earlier version active again (recorded as a rollback in the audit log)."""
    check_tenant(caller, tenant)
    return _out(await services(request).engine.overrides.rollback(
        tenant, feature, version, author=caller.actor))


@router.get(ONE + "/diff", response_model=DiffOut, responses=ERRORS)
async def diff(tenant: TenantName, feature: FeatureName, request: Request, caller: KeyCaller,
               from_version: Annotated[int, Query(alias="from", ge=1, le=2**31 - 1)],
               to_version: Annotated[int, Query(alias="to", ge=1, le=2**31 - 1)]) -> DiffOut:
    check_tenant(caller, tenant)
    text = await services(request).engine.overrides.diff(tenant, feature, from_version,
                                                         to_version)
    return DiffOut(diff=text)
