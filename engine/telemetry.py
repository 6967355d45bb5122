"""OpenTelemetry spans for calls and backend attempts, after the GenAI semantic conventions.

Spans are made only when the program has set up OpenTelemetry tracing before the Engine is
built (a TracerProvider set globally, e.g. by `opentelemetry-instrument featurelm serve`, or one
passed to the Engine). Otherwise this module never imports opentelemetry and the engine's hooks
each cost one `is None` test per call.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from featurelm.engine.config import BackendConfig
    from featurelm.engine.structured import AttemptListener
    from featurelm.engine.types import Completion, CompletionRequest

OPERATION = "chat"
#: gen_ai.provider.name per adapter kind; hosted backends name theirs in the model
#: ("anthropic/claude-...", litellm's convention), with OpenAI as litellm's default.
_PROVIDER_BY_KIND = {"openai": "openai", "local": "llama_cpp", "scripted": "featurelm.scripted"}


def provider_name(config: BackendConfig | None) -> str:
    if config is None:
        return "unknown"
    if config.kind == "hosted":
        return config.model.split("/", 1)[0] if "/" in config.model else "openai"
    return _PROVIDER_BY_KIND.get(config.kind, config.kind)


def error_type(error: BaseException) -> str:
    """A low-cardinality name for error.type: the provider's status, else the error class."""
    status = getattr(error, "provider_status", None)
    if status is not None:
        return str(status)
    if getattr(error, "timeout", False) is True:
        return "timeout"
    return type(error).__name__


def configured_tracer_provider() -> TracerProvider | None:
    """The global TracerProvider when the program set one, without importing opentelemetry
    when nothing did (a program that traces has imported it before building the Engine)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    # The API's defaults: nobody configured an SDK, so spans would go nowhere.
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


class Spans:
    """Makes the call span (`featurelm {feature}`) and one child per backend attempt
    (`chat {model}`); built only when tracing is on."""

    def __init__(self, provider: TracerProvider, backends: Mapping[str, BackendConfig]):
        from importlib.metadata import version

        from opentelemetry import trace

        self._trace = trace
        self._tracer: Tracer = provider.get_tracer("featurelm", version("featurelm"))
        self._backends = dict(backends)

    # -- The call ------------------------------------------------------------------------------

    def start_call(self, *, feature: str, feature_version: int, override_version: int | None,
                   tenant: str | None, route: str, request: CompletionRequest,
                   started: float) -> Span:
        """The call's span, begun when the call arrived (`started`, time.monotonic())."""
        begun_ns = time.time_ns() - int((time.monotonic() - started) * 1e9)
        attributes: dict[str, Any] = {
            "featurelm.feature": feature, "featurelm.feature_version": feature_version,
            "featurelm.route": route, "gen_ai.request.temperature": request.temperature,
            "gen_ai.request.max_tokens": request.max_tokens}
        if tenant is not None:
            attributes["featurelm.tenant"] = tenant
        if override_version is not None:
            attributes["featurelm.override_version"] = override_version
        return self._tracer.start_span(f"featurelm {feature}", start_time=begun_ns,
                                       attributes=attributes)

    def current(self, span: Span) -> AbstractContextManager[Span]:
        """Make `span` the parent of the spans started inside (the attempts)."""
        return self._trace.use_span(span, end_on_exit=False, record_exception=False,
                                    set_status_on_exception=False)

    @staticmethod
    def call_succeeded(span: Span, *, model: str, backend: str, attempts: int, cached: bool,
                       tokens_in: int, tokens_out: int, cost_usd: float,
                       stages_ms: Mapping[str, float] | None) -> None:
        # The call's totals are featurelm.usage.*, not gen_ai.usage.*: tools that sum tokens
        # over GenAI spans then count each upstream call once, on its attempt span.
        span.set_attributes({
            "gen_ai.response.model": model, "featurelm.backend": backend,
            "featurelm.attempts": attempts, "featurelm.cached": cached,
            "featurelm.usage.input_tokens": tokens_in,
            "featurelm.usage.output_tokens": tokens_out, "featurelm.cost_usd": cost_usd})
        if stages_ms:
            span.set_attributes({f"featurelm.stage.{name}_ms": ms
                                 for name, ms in stages_ms.items()})

    def call_failed(self, span: Span, error: BaseException) -> None:
        attempts = getattr(error, "attempts", None)
        span.set_attributes({"error.type": error_type(error), "featurelm.cached": False,
                             "featurelm.attempts": len(attempts) if attempts else 0})
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR,
                                           f"{type(error).__name__}: {str(error)[:200]}"))

    def on_attempt(self, then: AttemptListener | None) -> AttemptListener:
        """A generate_structured listener adding each validated reply to the current span
        as an event (errors, repair), then calling `then` (the trace's listener)."""
        get_current_span = self._trace.get_current_span

        def listener(completion: Completion, errors: list[str], repaired: bool,
                     validate_s: float) -> None:
            get_current_span().add_event("featurelm.validation", {
                "featurelm.backend": completion.backend, "featurelm.valid": not errors,
                "featurelm.errors": len(errors), "featurelm.repaired": repaired,
                "featurelm.validate_ms": round(validate_s * 1000, 3)})
            if then is not None:
                then(completion, errors, repaired, validate_s)

        return listener

    # -- One upstream call (dispatcher) --------------------------------------------------------

    @contextmanager
    def attempt(self, backend: str, model: str, request: CompletionRequest, *,
                retry: int) -> Iterator[Span]:
        """A child span of the current one around one upstream call to `backend`."""
        config = self._backends.get(backend)
        provider = provider_name(config)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": OPERATION,
            # Both names: gen_ai.system before semantic conventions 1.37, provider.name after.
            "gen_ai.provider.name": provider, "gen_ai.system": provider,
            "gen_ai.request.model": model,
            "gen_ai.request.temperature": request.temperature,
            "gen_ai.request.max_tokens": request.max_tokens,
            "featurelm.backend": backend, "featurelm.retry": retry}
        with self._tracer.start_as_current_span(
                f"{OPERATION} {model}", kind=self._trace.SpanKind.CLIENT, attributes=attributes,
                record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_attribute("error.type", error_type(exc))
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR,
                                                   str(exc)[:200]))
                raise

    @staticmethod
    def attempt_succeeded(span: Span, completion: Completion) -> None:
        span.set_attributes({
            "gen_ai.response.model": completion.model,
            "gen_ai.response.finish_reasons": [completion.finish_reason],
            "gen_ai.usage.input_tokens": completion.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": completion.usage.completion_tokens})
