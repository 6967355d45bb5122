"""The Engine: one object holding registry, backends, dispatcher and cache, built from config.

`Engine.run` is the path of one call: resolve the feature, validate the input, render the
prompt, call the route's backends for schema-valid output, and report what it cost.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurelm.engine.backends import Backend
from featurelm.engine.backends.base import PooledBackend
from featurelm.engine.cache import BackendId, CacheEntry, CachePlan, ResultCache, build_store
from featurelm.engine.capability import check_routes
from featurelm.engine.config import EngineConfig, load_config
from featurelm.engine.dispatch import BreakerState, CallRecord, Dispatcher, TextSink
from featurelm.engine.errors import InputError, SchemaViolation, TooLargeError
from featurelm.engine.loader import FeatureRegistry, LoadedFeature, build_feature
from featurelm.engine.overrides import EvalGate, Overrides
from featurelm.engine.prompts import PromptRenderer, RenderLimits, TemplateRefused
from featurelm.engine.schemas import MAX_INSTANCE_DEPTH, json_depth, violations
from featurelm.engine.stats import EngineStats
from featurelm.engine.structured import AttemptListener, generate_structured
from featurelm.engine.text import describe, lone_surrogate_path
from featurelm.engine.traces import Trace, TraceWriter, current_trace
from featurelm.engine.traces import begin as begin_trace
from featurelm.engine.types import Completion, CompletionRequest

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from featurelm.engine.store import Store
    from featurelm.engine.streaming import StreamEvent
    from featurelm.engine.telemetry import Spans

log = logging.getLogger("featurelm.engine")

BackendWrapper = Callable[[Backend], Backend]
#: Encodes exactly like engine.schemas.canonical_json, built once (json.dumps with options
#: builds a new encoder on every call).
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class RunOptions:
    """Per-call choices a caller may make; everything else is the engine's business."""

    #: Another route, only from the feature's allowed list.
    route: str | None = None
    #: False = "no-cache": skip the cache read (the result is still stored).
    cache_read: bool = True
    #: False = "no-store": do not store the result.
    cache_write: bool = True
    #: False: this call makes its own backend call even when an identical one is in flight
    #: (eval repeats must each reach the model, or flakiness would stay hidden).
    coalesce: bool = True
    #: Labels passed to backends for logs and recordings (for example the eval case id).
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Meta:
    feature: str
    feature_version: int
    tenant: str | None
    override_version: int | None
    route: str
    backend: str
    model: str
    attempts: int
    tokens_in: int
    tokens_out: int
    latency_ms: float
    cost_usd: float
    #: True when this call made no backend call of its own: a stored entry or an identical
    #: call in flight answered it (usage, cost and attempts are then 0).
    cached: bool

    def as_dict(self) -> dict[str, Any]:
        # Every field is a scalar, so a shallow copy is the whole of dataclasses.asdict,
        # without its recursive deep copy (measurable on every response).
        return dict(vars(self))


@dataclass(frozen=True)
class Result:
    output: dict[str, Any]
    meta: Meta


_DEFAULT_OPTIONS = RunOptions()
#: Receives an attempt's text as the model writes it: (text, attempt number from 1).
AttemptSink = Callable[[str, int], Awaitable[None]]


def _attempt_sink(on_text: AttemptSink, attempt: int) -> TextSink:
    async def sink(text: str) -> None:
        await on_text(text, attempt)

    return sink


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """A call that passed every check made before a backend is called (`Engine.prepare`)."""

    feature: LoadedFeature
    tenant: str | None
    route: str
    request: CompletionRequest
    plan: CachePlan
    #: time.monotonic() when the call arrived, and when its deadline runs out.
    started: float
    deadline: float
    #: The call's trace when it was sampled (traces: in featurelm.yaml), else None.
    trace: Trace | None = None


class Engine:
    def __init__(self, config: EngineConfig, *, backend_wrapper: BackendWrapper | None = None,
                 eval_gate: EvalGate | None = None,
                 tracer_provider: TracerProvider | None = None):
        self._config = config
        limits = config.limits
        self.renderer = PromptRenderer(
            config.path(config.prompts_dir),
            RenderLimits(limits.max_template_chars, limits.max_rendered_chars,
                         limits.render_timeout_s, limits.render_memory_chars))
        self.registry = FeatureRegistry.load(config, self.renderer)
        self.dispatcher = Dispatcher.from_config(config, backend_wrapper=backend_wrapper,
                                                 on_call=self._record_call)
        self.backends: Mapping[str, Backend] = self.dispatcher.backends
        #: How each backend on each feature's routes honours its output schema (see
        #: engine.capability); a feature no backend on its route can serve fails the load.
        self.route_plans = check_routes(self.registry.all(), config, self.backends,
                                        self.renderer)
        #: Result cache (memory, none or Redis, per `cache:`); `cache.failures` counts the
        #: cache operations that failed and were served around.
        self.cache = ResultCache(build_store(config))
        self._call_listeners: list[Callable[[CallRecord], None]] = []
        secret = os.environ.get(config.secret_env)
        if not secret:
            log.info("%s is not set; using a per-process secret (tenant salts will differ "
                        "between replicas)", config.secret_env)
        self._secret = (secret or secrets.token_hex(32)).encode()
        self._store: Store | None = None
        self._store_lock = asyncio.Lock()
        #: Failed store connects (a connected store counts its own failures).
        self._store_connect_failures = 0
        self._overrides = Overrides(config, self.registry, self.renderer, self.store,
                                   refresh_s=config.override_refresh_s, eval_gate=eval_gate)
        self._check_trace_features(config)
        #: Samples calls for tracing and stores their traces in the background.
        self.traces = TraceWriter(config.traces, self.registry.names(), self.store)
        self._tracing = self.traces.enabled
        #: OpenTelemetry spans, when the program set up tracing (engine.telemetry); else None.
        self._spans = _spans(config, tracer_provider)
        self.dispatcher.spans = self._spans

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None, *,
                    backend_wrapper: BackendWrapper | None = None,
                    eval_gate: EvalGate | None = None,
                    tracer_provider: TracerProvider | None = None) -> Engine:
        return cls(load_config(path), backend_wrapper=backend_wrapper, eval_gate=eval_gate,
                   tracer_provider=tracer_provider)

    async def store(self) -> Store:
        """The tenant store, connected (and migrated) on first use."""
        if self._store is None:
            async with self._store_lock:
                if self._store is None:
                    from featurelm.engine.store import Store

                    try:
                        self._store = await Store.connect(
                            self._store_url(), timeout_s=self._config.store_timeout_s)
                    except Exception:
                        self._store_connect_failures += 1
                        raise
        return self._store

    def _store_url(self) -> str:
        """The configured store URL, a relative SQLite path resolved against the config file."""
        url = self.config.store
        for prefix in ("sqlite:///", "sqlite+aiosqlite:///"):
            path = url[len(prefix):]
            if url.startswith(prefix) and path and not path.startswith(":memory:") \
                    and not os.path.isabs(path):
                return prefix + str(self.config.path(Path(path)))
        return url

    @property
    def store_needed(self) -> bool:
        """Whether calls depend on the tenant store: with `auth: required` every call
        authenticates against it; with `auth: off` only a call that sends a key, the admin
        API and tenant overrides do, and the store connects on the first of those."""
        return self.config.auth == "required" or self._store is not None

    async def start(self) -> None:
        """Connect what a server needs before taking traffic: the store when calls need it,
        so a wrong store URL fails the start instead of the first call."""
        if self.store_needed:
            await self.store()

    def _check_trace_features(self, config: EngineConfig) -> None:
        unknown = sorted(set(config.traces.features) - set(self.registry.names()))
        if unknown:
            from featurelm.engine.errors import ContractError, ContractIssue

            raise ContractError([ContractIssue(
                "featurelm.yaml", f"traces.features.{name}", "no such feature",
                f"use one of: {', '.join(self.registry.names())}") for name in unknown])

    async def flush_traces(self, timeout_s: float = 10.0) -> None:
        """Wait until the traces of calls made so far are stored (tests, the CLI)."""
        await self.traces.flush(timeout_s)

    async def aclose(self) -> None:
        try:
            await self.traces.aclose()
            await self.cache.aclose()
            for backend in self.backends.values():
                await backend.aclose()
        finally:
            if self._store is not None:
                store, self._store = self._store, None
                await store.aclose()

    async def __aenter__(self) -> Engine:
        """`async with Engine.from_config(...) as engine:` starts it and closes what it holds
        (backend connections, the cache client, the store) on the way out."""
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- Extension points for serving, evals and the command line (docs/python.md) -----------
    # What code outside the engine may read or call, so the attributes behind them can change.

    @property
    def config(self) -> EngineConfig:
        """The loaded featurelm.yaml (read-only: the engine was built from it)."""
        return self._config

    @property
    def overrides(self) -> Overrides:
        """Tenant overrides: apply, list, activate, roll back, diff (the admin API and CLI)."""
        return self._overrides

    def set_eval_gate(self, gate: EvalGate | None) -> None:
        """Gate override activations (`run_evals`) on the feature's eval cases; the engine
        cannot import the evals, so whoever composes the program supplies the gate."""
        self._overrides.eval_gate = gate

    def feature_names(self) -> list[str]:
        """The base features' names, sorted."""
        return self.registry.names()

    def features(self) -> list[LoadedFeature]:
        """The base features (no tenant override), sorted by name."""
        return self.registry.all()

    def feature(self, name: str) -> LoadedFeature | None:
        """The base feature `name`, or None; `resolve` gives a tenant's view of it."""
        return self.registry.get(name)

    def build_feature(self, spec: Mapping[str, Any], *, source: str) -> LoadedFeature:
        """A feature defined in code rather than in features/ (the eval judge), checked like
        a feature file and rendered by this engine; run it with `run_feature`."""
        return build_feature(spec, source=source, config=self._config, renderer=self.renderer)

    def unavailable_routes(self) -> list[str]:
        """Routes whose every backend has an open circuit breaker: they cannot answer now."""
        dispatcher = self.dispatcher
        return [route for route, rc in dispatcher.routes.items()
                if all(dispatcher.breakers[b].state is BreakerState.OPEN for b in rc.backends)]

    def stats(self) -> EngineStats:
        """Cache and store counters since start, degradation included (for /metrics)."""
        cache = self.cache.stats
        store = self._store
        return EngineStats(
            cache_hits=cache.hits, cache_misses=cache.misses, cache_stores=cache.stores,
            cache_coalesced=cache.coalesced, cache_failures=self.cache.failures,
            store_failures=self._store_connect_failures + (store.failures if store else 0),
            pools=tuple(b.pool_stats() for b in self.backends.values()
                        if isinstance(b, PooledBackend)))

    def on_call(self, listener: Callable[[CallRecord], None]) -> None:
        """Be told of every backend call (usage, cost, attempts), labelled with feature and
        tenant: the metrics and usage ledger subscribe here."""
        self._call_listeners.append(listener)

    def _record_call(self, record: CallRecord) -> None:
        if self._tracing and (trace := current_trace.get()) is not None:
            trace.on_dispatch(record)
        for listener in self._call_listeners:
            listener(record)

    def tenant_salt(self, tenant: str | None) -> str | None:
        """Server-derived per-tenant salt for backend prefix caches; never client-chosen."""
        if tenant is None:
            return None
        return hmac.new(self._secret, f"cache-salt:{tenant}".encode(), hashlib.sha256).hexdigest()

    async def resolve(self, name: str, tenant: str | None = None) -> LoadedFeature:
        """The feature as `tenant` sees it (its active override merged), or the base feature."""
        return await self.overrides.resolve(name, tenant)

    def validate_input(self, feature: LoadedFeature, input: Any) -> dict[str, Any]:
        if not isinstance(input, dict):
            raise InputError("input must be a JSON object")
        # Depth first, iteratively: serializing a hostile nesting would hit the recursion limit.
        if json_depth(input) > MAX_INSTANCE_DEPTH:
            raise InputError("input is nested too deeply", [SchemaViolation(
                "$", f"nested deeper than {MAX_INSTANCE_DEPTH} levels")])
        if (bad := lone_surrogate_path(input)) is not None:
            raise InputError("input holds invalid Unicode", [SchemaViolation(bad, describe(bad))])
        try:
            # canonical_json's bytes, counted without building the bytes (it is pure ASCII).
            size = len(_CANONICAL_JSON.encode(input))
        except (TypeError, ValueError):
            raise InputError("input must be JSON data (objects, arrays, strings, numbers, "
                             "booleans, null)") from None
        if size > self.config.limits.max_input_bytes:
            raise TooLargeError(f"input is {size} bytes, over the "
                                f"{self.config.limits.max_input_bytes}-byte limit")
        problems = violations(feature.spec.input, input)
        if problems:
            raise InputError(f"input does not match the {feature.name} input schema", problems)
        return input

    def route_for(self, feature: LoadedFeature, options: RunOptions) -> str:
        """The route this call takes: the caller's choice if the feature allows it."""
        route = options.route or feature.spec.model.route
        if route not in feature.allowed_routes():
            raise InputError(f"route {route!r} is not allowed for {feature.name}; allowed: "
                             f"{', '.join(feature.allowed_routes())}")
        return route

    def build_request(self, feature: LoadedFeature, input: dict[str, Any], *,
                      tenant: str | None, options: RunOptions) -> CompletionRequest:
        try:
            messages = feature.render_messages(self.renderer, input)
        except TemplateRefused as exc:
            raise InputError(f"the prompt could not be rendered for this input: {exc}") from None
        policy = feature.spec.model
        return CompletionRequest(
            messages=messages, output_schema=feature.spec.output,
            temperature=policy.temperature, max_tokens=policy.max_output_tokens,
            params=policy.params.as_request_params(), cache_salt=self.tenant_salt(tenant),
            labels={"feature": feature.name, "tenant": tenant or "", **options.labels})

    def check_budget(self, route: str, request: CompletionRequest) -> None:
        """Refuse a prompt no backend on the route can hold, before any backend call."""
        self.dispatcher.ensure_fits(route, request)

    async def run(self, feature_name: str, input: Any, *, tenant: str | None = None,
                  options: RunOptions | None = None) -> Result:
        """Run a feature as `tenant` sees it and return schema-valid output with meta."""
        feature = await self.resolve(feature_name, tenant)
        return await self.run_feature(feature, input, tenant=tenant, options=options)

    async def run_feature(self, feature: LoadedFeature, input: Any, *,
                          tenant: str | None = None, options: RunOptions | None = None) -> Result:
        """Run an already resolved feature (a candidate override under evaluation, say)."""
        return await self.execute(self.prepare(feature, input, tenant=tenant, options=options))

    async def stream(self, feature_name: str, input: Any, *, tenant: str | None = None,
                     options: RunOptions | None = None) -> AsyncIterator[StreamEvent]:
        """Run a feature as `run` does, yielding `Delta`s of model text as it is written, then
        one `Done` with the schema-valid result. Bad input raises before the first event."""
        from featurelm.engine.streaming import FeatureStream

        feature = await self.resolve(feature_name, tenant)
        stream = FeatureStream(self, feature, input, tenant=tenant, options=options)
        async for event in stream.events():
            yield event

    # -- The pipeline: every JSON, batch and streamed call takes these two steps ---------------

    def prepare(self, feature: LoadedFeature, input: Any, *, tenant: str | None = None,
                options: RunOptions | None = None) -> PreparedCall:
        """Everything checked before a backend is called: input, route, prompt, token budget,
        cache plan. Raises the caller's mistakes (InputError, TooLargeError) here, so a stream
        can answer them as a plain error before it starts."""
        trace = None
        # Eval runs (calls labelled with a case id) are not production calls: never traced.
        if self._tracing and not (options and "case" in options.labels) \
                and (settings := self.traces.sample(feature.name)) is not None:
            trace = begin_trace(feature.name, feature.spec.version, feature.override_version,
                                tenant, settings, input)
        return self._prepare(feature, input, tenant, options or _DEFAULT_OPTIONS, trace)

    def _prepare(self, feature: LoadedFeature, input: Any, tenant: str | None,
                 options: RunOptions, trace: Trace | None) -> PreparedCall:
        started = time.monotonic()
        self.validate_input(feature, input)
        route = self.route_for(feature, options)
        if trace is not None:
            trace.stage("input")
        request = self.build_request(feature, input, tenant=tenant, options=options)
        if trace is not None:
            trace.stage("render")
        self.check_budget(route, request)
        if trace is not None:
            trace.stage("budget")
        plan = self.cache.plan(feature, request, tenant=tenant, chain=self._chain(route),
                               read=options.cache_read, write=options.cache_write,
                               coalesce=options.coalesce)
        if trace is not None:
            trace.route = route
            trace.set_messages(request.messages)
            trace.stage("cache")
        return PreparedCall(feature, tenant, route, request, plan, started,
                            started + self.config.limits.request_timeout_s, trace)

    async def explain(self, feature: LoadedFeature, input: Any, *, tenant: str | None = None,
                      options: RunOptions | None = None) -> tuple[Result | None, Trace]:
        """Run one call traced whatever the sample rate, and return its trace with the
        result (None when the call failed; the trace says why). Nothing is stored."""
        trace = begin_trace(feature.name, feature.spec.version, feature.override_version,
                            tenant, self.traces.settings(feature.name), input)
        try:
            call = self._prepare(feature, input, tenant, options or _DEFAULT_OPTIONS, trace)
            return await self._traced(call, None, trace, store=False), trace
        except Exception as exc:
            if trace.status == "ok":
                trace.finish(error=exc)
            return None, trace

    async def execute(self, call: PreparedCall, on_text: AttemptSink | None = None) -> Result:
        """Answer a prepared call: a cached result, an identical call in flight, or the
        route's backends until the output is schema-valid; then cache it. With `on_text`,
        each attempt's text goes to it as the model writes (a streamed call); usage and cost
        are recorded by the dispatcher, once per upstream call, either way."""
        if self._spans is not None:
            return await self._spanned(call, on_text, self._spans)
        if call.trace is not None:
            return await self._traced(call, on_text, call.trace, store=True)
        return await self._execute(call, on_text)

    async def _spanned(self, call: PreparedCall, on_text: AttemptSink | None,
                       spans: Spans) -> Result:
        span = spans.start_call(
            feature=call.feature.name, feature_version=call.feature.spec.version,
            override_version=call.feature.override_version, tenant=call.tenant,
            route=call.route, request=call.request, started=call.started)
        try:
            with spans.current(span):
                if call.trace is not None:
                    result = await self._traced(call, on_text, call.trace, store=True)
                else:
                    result = await self._execute(call, on_text)
        except BaseException as exc:
            spans.call_failed(span, exc)
            raise
        else:
            meta = result.meta
            spans.call_succeeded(
                span, model=meta.model, backend=meta.backend, attempts=meta.attempts,
                cached=meta.cached, tokens_in=meta.tokens_in, tokens_out=meta.tokens_out,
                cost_usd=meta.cost_usd,
                stages_ms=call.trace.stages_ms if call.trace is not None else None)
            return result
        finally:
            span.end()

    async def _traced(self, call: PreparedCall, on_text: AttemptSink | None, trace: Trace, *,
                      store: bool) -> Result:
        token = current_trace.set(trace)
        try:
            result = await self._execute(call, on_text)
        except Exception as exc:
            trace.finish(error=exc)
            raise
        else:
            meta = result.meta
            trace.cached = meta.cached
            trace.backend = meta.backend
            trace.tokens_in, trace.tokens_out = meta.tokens_in, meta.tokens_out
            trace.cost_usd = meta.cost_usd
            trace.finish(output=result.output)
            return result
        finally:
            current_trace.reset(token)
            if store:
                self.traces.submit(trace)

    async def _execute(self, call: PreparedCall, on_text: AttemptSink | None) -> Result:
        plan = call.plan
        schema = call.feature.spec.output
        trace = call.trace
        if plan.read:
            entry = await self.cache.lookup(plan, schema)
            if trace is not None:
                trace.stage("cache")
            if entry is not None:
                return self._cached_result(call, entry)

        async def compute() -> tuple[CacheEntry, Result]:
            cost = 0.0
            attempt = 0

            async def complete(req: CompletionRequest, *,
                               skip: frozenset[str] = frozenset()) -> Completion:
                nonlocal cost, attempt
                attempt += 1
                sink = None if on_text is None else _attempt_sink(on_text, attempt)
                sent = time.perf_counter()
                dispatched = await self.dispatcher.dispatch(call.route, req, skip=skip,
                                                            deadline=call.deadline, on_text=sink)
                if trace is not None:
                    trace.add_stage("upstream", time.perf_counter() - sent)
                cost += dispatched.record.cost_usd
                return dispatched.completion

            on_attempt: AttemptListener | None = None if trace is None else trace.on_attempt
            if self._spans is not None:
                on_attempt = self._spans.on_attempt(on_attempt)
            result = await generate_structured(
                complete, call.request, schema, call.feature.spec.model.max_attempts,
                on_attempt=on_attempt)
            completion = result.completion
            meta = self._meta(call, backend=completion.backend, model=completion.model,
                              attempts=result.attempts, tokens_in=result.tokens_in,
                              tokens_out=result.tokens_out, cost_usd=round(cost, 8),
                              cached=False)
            # The entry keeps its own copy: callers may mutate the output they are given.
            entry = CacheEntry(copy.deepcopy(result.output), meta.backend, meta.model)
            if plan.write:
                await self.cache.save(plan, entry, schema)
            return entry, Result(output=result.output, meta=meta)

        if not plan.merge:
            return (await compute())[1]
        waited = time.perf_counter()
        entry, own = await self.cache.coalesce(plan, compute, schema=schema,
                                               deadline=call.deadline)
        if own is not None:
            return own
        if trace is not None:
            trace.coalesced = True
            trace.add_stage("queue", time.perf_counter() - waited)
        return self._cached_result(call, entry)

    def _chain(self, route: str) -> list[BackendId]:
        """The route's fallback chain as the cache keys it (name, adapter kind, model)."""
        backends = self.config.backends
        return [BackendId(name, backends[name].kind, backends[name].model)
                for name in self.dispatcher.route(route).backends]

    def _cached_result(self, call: PreparedCall, entry: CacheEntry) -> Result:
        """A result answered without a backend call of its own: no new usage to report."""
        meta = self._meta(call, backend=entry.backend, model=entry.model, attempts=0,
                          tokens_in=0, tokens_out=0, cost_usd=0.0, cached=True)
        return Result(output=copy.deepcopy(entry.output), meta=meta)

    @staticmethod
    def _meta(call: PreparedCall, *, backend: str, model: str, attempts: int, tokens_in: int,
              tokens_out: int, cost_usd: float, cached: bool) -> Meta:
        """The one place a call's meta is built."""
        feature = call.feature
        return Meta(feature=feature.name, feature_version=feature.spec.version,
                    tenant=call.tenant, override_version=feature.override_version,
                    route=call.route, backend=backend, model=model, attempts=attempts,
                    tokens_in=tokens_in, tokens_out=tokens_out,
                    latency_ms=round((time.monotonic() - call.started) * 1000, 2),
                    cost_usd=cost_usd, cached=cached)


def _spans(config: EngineConfig, provider: TracerProvider | None) -> Spans | None:
    """Spans when a TracerProvider was given or set globally; imports nothing otherwise."""
    from featurelm.engine.telemetry import Spans, configured_tracer_provider

    provider = provider or configured_tracer_provider()
    return None if provider is None else Spans(provider, config.backends)
