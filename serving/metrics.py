"""Prometheus metrics: HTTP latency, per feature/backend latency, cache, validation, retries,
fallbacks, tokens and cost per tenant and feature, and the engine's degradation counters (cache
and tenant store failures); one registry per app, no globals."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

from featurelm.engine.config import RouteConfig
from featurelm.engine.dispatch import CallRecord
from featurelm.engine.engine import Meta
from featurelm.engine.loader import LoadedFeature
from featurelm.engine.stats import EngineStats

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
        self.feedback = Counter(
            "featurelm_feedback", "Feedback given on calls (POST /v1/feedback), by feature, "
            "tenant, override version and kind (score, label, correction).",
            ["feature", "tenant", "version", "kind"], registry=r)
        self.output_values = Counter(
            "featurelm_output_values", "Values of enum-valued output fields, per feature and "
            "tenant (the distribution `featurelm drift` compares).",
            ["feature", "tenant", "field", "value"], registry=r)
        self.input_bytes = Histogram(
            "featurelm_input_bytes", "Request body size of feature calls, per feature and tenant.",
            ["feature", "tenant"], buckets=(256, 1024, 4096, 16384, 65536, 262144), registry=r)
        #: Enum-valued output fields per (feature, version): the values `output_values` counts.
        self._enums: dict[tuple[str, int], dict[str, frozenset[str]]] = {}
        #: Labelled children by metric and label values: labels() validates and takes a lock
        #: on every call, about ten times per feature call.
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        self.feedback_score = Histogram(
            "featurelm_feedback_score", "Scores given as feedback (0 = wrong .. 1 = right).",
            ["feature", "tenant", "version"], buckets=(0.2, 0.4, 0.6, 0.8, 1.0), registry=r)

    def _child(self, metric: MetricWrapperBase, *values: str) -> Any:
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[(metric, values)] = metric.labels(*values)
        return child

    def on_call(self, record: CallRecord) -> None:
        """engine.on_call listener: one record per dispatched backend call."""
        feature = record.labels.get("feature", "")
        tenant = record.labels.get("tenant", "") or "-"
        if record.attempts > 1:
            self._child(self.retries, feature, record.route).inc(record.attempts - 1)
        if record.error is not None:
            self._child(self.backend_errors, feature, record.route).inc()
            return
        backend = record.backend or ""
        if record.cancelled:  # a hedge's losing half: it cost its prompt, it answered nothing
            self._child(self.tokens, tenant, feature, "in").inc(record.usage.prompt_tokens)
            self._child(self.cost, tenant, feature).inc(record.cost_usd)
            return
        self._child(self.backend_latency, feature, backend).observe(record.latency_ms / 1000)
        route = self.routes.get(record.route)
        if route is not None and route.backends and backend != route.backends[0]:
            self._child(self.fallbacks, feature, record.route, backend).inc()
        self._child(self.tokens, tenant, feature, "in").inc(record.usage.prompt_tokens)
        self._child(self.tokens, tenant, feature, "out").inc(record.usage.completion_tokens)
        self._child(self.cost, tenant, feature).inc(record.cost_usd)

    def on_result(self, meta: Meta) -> None:
        self._child(self.feature_latency, meta.feature, meta.backend).observe(
            meta.latency_ms / 1000)
        self._child(self.cache, meta.feature, "hit" if meta.cached else "miss").inc()
        if meta.attempts > 1:
            self._child(self.validation_failures, meta.feature, "output").inc(meta.attempts - 1)

    def on_feedback(self, feature: str, tenant: object, version: object, score: float | None,
                    label: str | None, corrected: bool) -> None:
        who = str(tenant or "-")
        shown = str(version) if isinstance(version, int) else "base"
        if score is not None:
            self._child(self.feedback, feature, who, shown, "score").inc()
            self._child(self.feedback_score, feature, who, shown).observe(score)
        if label is not None:
            self._child(self.feedback, feature, who, shown, "label").inc()
        if corrected:
            self._child(self.feedback, feature, who, shown, "correction").inc()

    def on_output(self, feature: LoadedFeature, tenant: str | None,
                  output: Mapping[str, object]) -> None:
        """Count the enum-valued fields of a schema-valid output (bounded label values)."""
        key = (feature.name, feature.spec.version)
        enums = self._enums.get(key)
        if enums is None:
            properties = feature.spec.output.get("properties")
            enums = self._enums[key] = {
                name: frozenset(str(v) for v in sub["enum"])
                for name, sub in (properties.items() if isinstance(properties, dict) else ())
                if isinstance(sub, dict) and isinstance(sub.get("enum"), list)}
        for field, allowed in enums.items():
            value = output.get(field)
            if isinstance(value, str) and value in allowed:
                self._child(self.output_values, feature.name, tenant or "-", field, value).inc()

    def on_input_size(self, feature: str, tenant: str | None, size: int) -> None:
        self._child(self.input_bytes, feature, tenant or "-").observe(size)

    def on_input_refused(self, feature: str) -> None:
        self._child(self.validation_failures, feature, "input").inc()

    def on_output_failed(self, feature: str, attempts: int) -> None:
        self._child(self.validation_failures, feature, "output").inc(attempts)

    def on_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._child(self.http_latency, method, route, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineCollector:
    """The engine's own counters (`Engine.stats`), read at each scrape. A failing cache or
    store is served around, so calls succeed and these counters are the only sign of it."""

    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        s = self.stats()
        lookups = CounterMetricFamily(
            "featurelm_cache_lookups", "Result cache lookups, engine-wide.", labels=["result"])
        lookups.add_metric(["hit"], s.cache_hits)
        lookups.add_metric(["miss"], s.cache_misses)
        stores = CounterMetricFamily(
            "featurelm_cache_stores", "Valid results saved to the result cache (a failing "
            "cache drops them and counts a failure).", s.cache_stores)
        coalesced = CounterMetricFamily(
            "featurelm_cache_coalesced", "Calls answered by an identical call in flight, on "
            "this replica or another.", s.cache_coalesced)
        cache_failures = CounterMetricFamily(
            "featurelm_cache_failures", "Result cache operations that failed (Redis down or "
            "slow); the calls went on without the cache.", s.cache_failures)
        store_failures = CounterMetricFamily(
            "featurelm_store_failures", "Tenant store operations (connects included) that "
            "failed.", s.store_failures)
        return [lookups, stores, coalesced, cache_failures, store_failures, *pool_metrics(s)]


def pool_metrics(s: EngineStats) -> list[Metric]:
    """Per HTTP backend: its connection limit, calls in flight, calls waiting for a free
    connection (above zero, the backend's max_connections is the bottleneck) and calls that
    gave up waiting."""
    labels = ["backend"]
    limit = GaugeMetricFamily("featurelm_backend_connections_limit",
                              "max_connections: calls a backend may have in flight.", labels=labels)
    in_flight = GaugeMetricFamily("featurelm_backend_calls_in_flight",
                                  "Calls holding a connection to the backend now.", labels=labels)
    waiting = GaugeMetricFamily(
        "featurelm_backend_calls_waiting", "Calls waiting for a free connection to the "
        "backend now (queued in the engine, not yet sent).", labels=labels)
    timeouts = CounterMetricFamily(
        "featurelm_backend_queue_timeouts", "Calls that waited queue_timeout_s (or their "
        "deadline) for a free connection and gave up.", labels=labels)
    for pool in s.pools:
        limit.add_metric([pool.backend], pool.limit)
        in_flight.add_metric([pool.backend], pool.in_flight)
        waiting.add_metric([pool.backend], pool.waiting)
        timeouts.add_metric([pool.backend], pool.queue_timeouts)
    return [limit, in_flight, waiting, timeouts]
