"""Prometheus metrics: HTTP latency, per feature/backend latency, cache, validation, retries,
fallbacks, and tokens and cost per tenant and feature (one registry per app, no globals)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from featurelm.engine.config import RouteConfig
from featurelm.engine.dispatch import CallRecord
from featurelm.engine.engine import Meta

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, routes: Mapping[str, RouteConfig]) -> None:
        self.routes = routes
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_latency = Histogram(
            "featurelm_http_request_duration_seconds", "HTTP request latency.",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.feature_latency = Histogram(
            "featurelm_feature_duration_seconds", "Feature call latency, by answering backend.",
            ["feature", "backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.backend_latency = Histogram(
            "featurelm_backend_call_duration_seconds",
            "One dispatched backend call (retries and fallbacks included).",
            ["feature", "backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.cache = Counter("featurelm_cache_requests", "Result cache lookups.",
                             ["feature", "result"], registry=r)
        self.validation_failures = Counter(
            "featurelm_validation_failures", "Inputs refused by the input schema (input) and "
            "model replies that failed the output schema (output).",
            ["feature", "kind"], registry=r)
        self.retries = Counter("featurelm_backend_retries", "Backend attempts beyond the first.",
                               ["feature", "route"], registry=r)
        self.fallbacks = Counter(
            "featurelm_backend_fallbacks", "Calls answered by a backend other than the "
            "route's first.", ["feature", "route", "backend"], registry=r)
        self.backend_errors = Counter("featurelm_backend_errors", "Dispatched calls that failed.",
                                      ["feature", "route"], registry=r)
        self.tokens = Counter("featurelm_tokens", "Tokens used, by tenant and feature.",
                              ["tenant", "feature", "direction"], registry=r)
        self.cost = Counter("featurelm_cost_usd", "Backend cost in USD, by tenant and feature.",
                            ["tenant", "feature"], registry=r)

    def on_call(self, record: CallRecord) -> None:
        """engine.on_call listener: one record per dispatched backend call."""
        feature = record.labels.get("feature", "")
        tenant = record.labels.get("tenant", "") or "-"
        if record.attempts > 1:
            self.retries.labels(feature, record.route).inc(record.attempts - 1)
        if record.error is not None:
            self.backend_errors.labels(feature, record.route).inc()
            return
        backend = record.backend or ""
        self.backend_latency.labels(feature, backend).observe(record.latency_ms / 1000)
        route = self.routes.get(record.route)
        if route is not None and route.backends and backend != route.backends[0]:
            self.fallbacks.labels(feature, record.route, backend).inc()
        self.tokens.labels(tenant, feature, "in").inc(record.usage.prompt_tokens)
        self.tokens.labels(tenant, feature, "out").inc(record.usage.completion_tokens)
        self.cost.labels(tenant, feature).inc(record.cost_usd)

    def on_result(self, meta: Meta) -> None:
        self.feature_latency.labels(meta.feature, meta.backend).observe(meta.latency_ms / 1000)
        self.cache.labels(meta.feature, "hit" if meta.cached else "miss").inc()
        if meta.attempts > 1:
            self.validation_failures.labels(meta.feature, "output").inc(meta.attempts - 1)

    def on_input_refused(self, feature: str) -> None:
        self.validation_failures.labels(feature, "input").inc()

    def on_output_failed(self, feature: str, attempts: int) -> None:
        self.validation_failures.labels(feature, "output").inc(attempts)

    def on_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_latency.labels(method, route, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
