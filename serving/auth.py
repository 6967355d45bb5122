"""Who is calling: `Authorization: Bearer <api key>` resolved by the tenant store.

The tenant always comes from the key, never from a header or body the client sets. With
`auth: off` a call without a key runs as no tenant (base features) and may not use the admin
API; a key that is sent is still checked.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from featurelm.engine.errors import (
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
)
from featurelm.serving.state import Services, services

log = logging.getLogger("featurelm.serving")

bearer = HTTPBearer(auto_error=False, description="An API key from `featurelm tenant create` "
                                                  "or `featurelm tenant admin-key`.")


@dataclass(frozen=True)
class Caller:
    tenant: str | None
    admin: bool = False
    authenticated: bool = False

    @property
    def actor(self) -> str:
        """Who to name in the audit log."""
        if self.admin:
            return "admin"
        return f"tenant:{self.tenant}" if self.tenant else "anonymous"


ANONYMOUS = Caller(tenant=None)


def _unauthorized(detail: str) -> UnauthorizedError:
    return UnauthorizedError(detail)


def bearer_token(authorization: str | None) -> str | None:
    """The key from `Authorization: Bearer <key>` (the scheme in any case), else None."""
    scheme, _, token = (authorization or "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


async def resolve_caller(svc: Services, authorization: str | None) -> Caller:
    """The caller behind an Authorization header (401 when a key is required and missing,
    or unknown; 503 when the store cannot be reached)."""
    token = bearer_token(authorization)
    if token is None:
        if authorization:
            raise _unauthorized("use `Authorization: Bearer <api key>`")
        if svc.engine.config.auth == "off":
            return ANONYMOUS
        raise _unauthorized("an API key is required: `Authorization: Bearer <api key>`")
    cached = svc.keys.fresh(token)
    if cached is None:
        try:
            # Bounded twice: the store's own timeouts, and this one over connect + lookup.
            async with asyncio.timeout(svc.engine.config.store_timeout_s * 2):
                store = await svc.engine.store()
                principal = await store.authenticate(token)
        except Exception as exc:
            cached = svc.keys.stale(token)
            if cached is None:
                log.error("tenant store unavailable during authentication: %s",
                          type(exc).__name__)
                raise UnavailableError("the tenant store cannot be reached",
                                       retry_after=5) from None
            log.warning("tenant store unavailable, using a key it confirmed earlier: %s",
                        type(exc).__name__)
        else:
            svc.keys.remember(token, principal.tenant if principal else None,
                              bool(principal and principal.admin), known=principal is not None)
            if principal is None:
                raise _unauthorized("unknown API key")
            return Caller(tenant=principal.tenant, admin=principal.admin, authenticated=True)
    if not cached.known:
        raise _unauthorized("unknown API key")
    return Caller(tenant=cached.tenant, admin=cached.admin, authenticated=True)


async def authenticate(
        request: Request,
        # Declares the bearer scheme in the OpenAPI spec; the header is read below.
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
    """The caller of this request, as a FastAPI dependency."""
    caller = await resolve_caller(services(request), request.headers.get("authorization"))
    request.state.tenant = caller.tenant
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]


async def require_key(caller: CallerDep) -> Caller:
    """Any API key (tenant or admin): the admin API is never anonymous."""
    if not caller.authenticated:
        raise _unauthorized("the admin API needs an API key, even with auth: off")
    return caller


async def require_admin(caller: Annotated[Caller, Depends(require_key)]) -> Caller:
    if not caller.admin:
        raise ForbiddenError("this endpoint needs an admin key")
    return caller


def check_tenant(caller: Caller, tenant: str) -> None:
    """An admin acts on any tenant; a tenant key only on its own (others look nonexistent)."""
    if caller.admin or caller.tenant == tenant:
        return
    raise NotFoundError(f"unknown tenant {tenant!r}")


KeyCaller = Annotated[Caller, Depends(require_key)]
AdminCaller = Annotated[Caller, Depends(require_admin)]
