"""What the routes share: the engine and the service objects built around it for one app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from fastapi import Request

from featurelm.engine import Engine
from featurelm.serving.keycache import KeyCache

if TYPE_CHECKING:
    from featurelm.serving.idempotency import Idempotency
    from featurelm.serving.kv import KV
    from featurelm.serving.limits import Limiter
    from featurelm.serving.metrics import Metrics


@dataclass
class Lifecycle:
    """Set by the server on SIGTERM: /readyz fails from then on, so traffic drains away."""

    draining: bool = False


@dataclass
class Services:
    engine: Engine
    kv: KV
    limiter: Limiter
    idempotency: Idempotency
    metrics: Metrics
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    #: API keys the store confirmed recently (calls go on while the store is slow).
    keys: KeyCache = field(default_factory=KeyCache)


def services(request: Request) -> Services:
    return cast(Services, request.app.state.services)
