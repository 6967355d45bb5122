"""OpenTelemetry spans: one call span, one child per upstream attempt (GenAI semantic
conventions), errors in the status; and nothing, not even the import, when tracing is off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from featurelm.engine import Engine, OutputError
from featurelm.engine.backends import Backend
from featurelm.engine.backends.scripted import ScriptedBackend
from featurelm.engine.errors import BackendError
from tests.conftest import ProjectFactory, last_line_of_python, scripted

POSITIVE = '{"sentiment": "positive"}'


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    yield spans
    spans.shutdown()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    # A provider of the test's own: the global one may be set only once per process.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The call span and its attempt spans, in the order they started."""
    calls = [s for s in spans if s.name.startswith("featurelm ")]
    assert len(calls) == 1, [s.name for s in spans]
    call = calls[0]
    assert call.context is not None
    children = sorted((s for s in spans if s.parent is not None
                       and s.parent.span_id == call.context.span_id),
                      key=lambda s: s.start_time or 0)
    assert len(children) == len(spans) - 1, "every other span is a child of the call span"
    return call, children


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def two_backends(make_project: ProjectFactory, **more: Any) -> Path:
    return make_project(
        backends={"primary": {**scripted(POSITIVE), "model": "small-model"},
                  "spare": {**scripted(POSITIVE), "model": "big-model"}},
        routes={"default": {"backends": ["primary", "spare"]}}, **more)


def failing(name: str, *errors: BaseException) -> Any:
    """A backend wrapper replacing `name` with one that raises `errors` in turn."""
    def wrap(backend: Backend) -> Backend:
        if backend.name != name:
            return backend
        return ScriptedBackend(list(errors), name=name, model=backend.model)
    return wrap


async def test_a_call_is_one_call_span_with_one_chat_child_carrying_genai_attributes(
        make_project: ProjectFactory, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    engine = Engine.from_config(two_backends(make_project), tracer_provider=provider)
    try:
        feature = engine.feature("sentiment")
        assert feature is not None
        result = await engine.run_feature(feature, {"text": "Love it"}, tenant="acme")
    finally:
        await engine.aclose()
    call, (attempt,) = by_name(exporter.get_finished_spans())
    assert call.name == "featurelm sentiment"
    assert call.status.status_code is StatusCode.UNSET
    assert attrs(call) | {"featurelm.cost_usd": 0} == attrs(call) | {
        "featurelm.feature": "sentiment", "featurelm.tenant": "acme",
        "featurelm.route": "default", "featurelm.cached": False, "featurelm.attempts": 1,
        "featurelm.backend": "primary", "gen_ai.response.model": "small-model",
        "gen_ai.request.max_tokens": 64, "gen_ai.request.temperature": 0.0,
        "featurelm.usage.input_tokens": result.meta.tokens_in,
        "featurelm.usage.output_tokens": result.meta.tokens_out, "featurelm.cost_usd": 0}
    # Usage is counted on the attempt only, so a sum over GenAI spans counts it once.
    assert not any(key.startswith("gen_ai.usage.") for key in attrs(call))

    assert attempt.name == "chat small-model"
    assert attempt.kind is SpanKind.CLIENT
    assert attrs(attempt) == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "featurelm.scripted",
        "gen_ai.system": "featurelm.scripted", "gen_ai.request.model": "small-model",
        "gen_ai.response.model": "small-model", "gen_ai.request.temperature": 0.0,
        "gen_ai.request.max_tokens": 64, "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": result.meta.tokens_in,
        "gen_ai.usage.output_tokens": result.meta.tokens_out,
        "featurelm.backend": "primary", "featurelm.retry": 0}
    assert result.meta.tokens_in > 0
    [event] = call.events
    assert event.name == "featurelm.validation"
    assert dict(event.attributes or {})["featurelm.valid"] is True


async def test_a_fallback_shows_the_failed_attempt_and_the_one_that_answered(
        make_project: ProjectFactory, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    down = BackendError("upstream said 503", backend="primary", provider_status=503,
                        retryable=False)
    engine = Engine.from_config(two_backends(make_project), tracer_provider=provider,
                                backend_wrapper=failing("primary", down))
    try:
        result = await engine.run("sentiment", {"text": "Love it"})
    finally:
        await engine.aclose()
    assert result.meta.backend == "spare"
    call, (first, second) = by_name(exporter.get_finished_spans())
    assert (first.name, second.name) == ("chat small-model", "chat big-model")
    assert first.status.status_code is StatusCode.ERROR
    assert attrs(first)["error.type"] == "503"
    assert "gen_ai.response.model" not in attrs(first)
    assert second.status.status_code is StatusCode.UNSET
    assert attrs(second)["gen_ai.response.model"] == "big-model"
    assert "error.type" not in attrs(second)
    assert call.status.status_code is StatusCode.UNSET
    assert attrs(call)["featurelm.backend"] == "spare"


async def test_a_failed_call_sets_the_error_status_on_the_call_span(
        make_project: ProjectFactory, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    engine = Engine.from_config(make_project(backends={"primary": scripted("not json")}),
                                tracer_provider=provider)
    max_attempts = engine.feature("sentiment").spec.model.max_attempts  # type: ignore[union-attr]
    try:
        with pytest.raises(OutputError):
            await engine.run("sentiment", {"text": "Love it"})
    finally:
        await engine.aclose()
    call, attempts = by_name(exporter.get_finished_spans())
    assert call.status.status_code is StatusCode.ERROR
    assert "OutputError" in (call.status.description or "")
    assert attrs(call)["error.type"] == "OutputError"
    assert attrs(call)["featurelm.attempts"] == max_attempts > 1
    # Each re-ask is its own upstream call: its span succeeded, its reply failed validation.
    assert len(attempts) == max_attempts
    assert all(a.status.status_code is StatusCode.UNSET for a in attempts)
    assert [dict(e.attributes or {})["featurelm.valid"] for e in call.events] \
        == [False] * max_attempts


async def test_every_backend_down_fails_the_attempts_and_the_call(
        make_project: ProjectFactory, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    down = BackendError("bad request", backend="primary", provider_status=400, retryable=False)
    engine = Engine.from_config(make_project(), tracer_provider=provider,
                                backend_wrapper=failing("primary", down))
    try:
        with pytest.raises(BackendError):
            await engine.run("sentiment", {"text": "Love it"})
    finally:
        await engine.aclose()
    call, (attempt,) = by_name(exporter.get_finished_spans())
    assert attrs(attempt)["error.type"] == "400"
    assert attrs(call)["error.type"] == "400"
    assert call.status.status_code is StatusCode.ERROR


async def test_a_cached_call_has_no_attempt_span(
        make_project: ProjectFactory, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    engine = Engine.from_config(make_project(), tracer_provider=provider)
    try:
        await engine.run("sentiment", {"text": "Love it"})
        exporter.clear()
        await engine.run("sentiment", {"text": "Love it"})
    finally:
        await engine.aclose()
    call, attempts = by_name(exporter.get_finished_spans())
    assert attempts == []
    assert attrs(call)["featurelm.cached"] is True
    assert attrs(call)["featurelm.attempts"] == 0


async def test_a_traced_call_puts_its_stage_timings_on_the_call_span(
        make_project: ProjectFactory, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    engine = Engine.from_config(make_project(extra={"traces": {"sample_rate": 1}}),
                                tracer_provider=provider)
    try:
        await engine.run("sentiment", {"text": "Love it"})
        await engine.flush_traces()
        assert engine.traces.written == 1
    finally:
        await engine.aclose()
    call, _ = by_name(exporter.get_finished_spans())
    stages = {k for k in attrs(call) if k.startswith("featurelm.stage.")}
    assert {"featurelm.stage.render_ms", "featurelm.stage.upstream_ms",
            "featurelm.stage.validate_ms"} <= stages


async def test_a_streamed_call_gets_the_same_spans(
        make_project: ProjectFactory, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    engine = Engine.from_config(make_project(), tracer_provider=provider)
    try:
        events = [event async for event in engine.stream("sentiment", {"text": "Love it"})]
    finally:
        await engine.aclose()
    assert events
    _, (attempt,) = by_name(exporter.get_finished_spans())
    assert attrs(attempt)["gen_ai.operation.name"] == "chat"


def test_a_globally_set_tracer_provider_switches_spans_on() -> None:
    # As `opentelemetry-instrument featurelm serve` or an embedding program does it.
    script = (
        "import asyncio, tempfile, pathlib, yaml\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import "
        "InMemorySpanExporter\n"
        "spans = InMemorySpanExporter(); provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(spans))\n"
        "trace.set_tracer_provider(provider)\n"
        + _ONE_CALL +
        "print(sorted(s.name for s in spans.get_finished_spans()))\n")
    assert last_line_of_python(script) == "['chat scripted', 'featurelm sentiment']"


_ONE_CALL = (
    "import sys\n"
    "import featurelm.cli, featurelm.serving.server\n"
    "from featurelm.engine import Engine\n"
    "from featurelm.serving.app import create_app\n"
    "root = pathlib.Path(tempfile.mkdtemp())\n"
    "(root / 'features').mkdir()\n"
    "(root / 'features' / 'sentiment.yaml').write_text(yaml.safe_dump({'name': 'sentiment', "
    "'description': 'd', 'input': {'type': 'object'}, 'output': {'type': 'object'}, "
    "'prompt': {'user': 'hi'}}))\n"
    "(root / 'featurelm.yaml').write_text(yaml.safe_dump({'backends': {'b': {'kind': "
    "'scripted', 'options': {'replies': ['{}']}}}, 'routes': {'default': {'backends': "
    "['b']}}, 'cache': 'none'}))\n"
    "async def main():\n"
    "    engine = Engine.from_config(root / 'featurelm.yaml')\n"
    "    create_app(engine)\n"
    "    await engine.run('sentiment', {})\n"
    "    await engine.aclose()\n"
    "asyncio.run(main())\n")


@pytest.mark.parametrize("installed", [True, False], ids=["not-configured", "not-installed"])
def test_without_configured_tracing_a_run_never_imports_opentelemetry(
        make_project: ProjectFactory, installed: bool) -> None:
    block = "" if installed else "sys.modules['opentelemetry'] = None  # as if not installed\n"
    script = ("import sys\n" + block +
              "from featurelm.cli import main\n"
              f"code = main(['--config', {str(make_project())!r}, 'run', 'sentiment', "
              "'--input', '{\"text\": \"great\"}'])\n"
              "print(code, sorted(m for m in sys.modules if m.startswith('opentelemetry') "
              "and sys.modules[m] is not None))\n")
    assert last_line_of_python(script) == "0 []"


def test_without_a_configured_provider_a_served_call_never_asks_for_a_tracer() -> None:
    # FastAPI imports opentelemetry-api itself, so under `featurelm serve` the module is
    # loaded; with no TracerProvider set the engine must still not make spans.
    script = (
        "import asyncio, tempfile, pathlib, yaml\n"
        "from opentelemetry import trace\n"
        "asked = []\n"
        "trace.ProxyTracerProvider.get_tracer = lambda *a, **k: asked.append(a)\n"
        "trace.NoOpTracerProvider.get_tracer = lambda *a, **k: asked.append(a)\n"
        + _ONE_CALL + "print(asked)\n")
    assert last_line_of_python(script) == "[]"
