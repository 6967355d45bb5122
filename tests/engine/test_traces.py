"""Call traces: opt-in, what a trace holds, redaction, size bound, retention, store outages."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from featurelm.engine import Engine, OutputError
from featurelm.engine.config import TracesConfig, TraceSettings
from featurelm.engine.errors import ContractError
from featurelm.engine.traces import Trace, TraceWriter, bounded, redact, request_id
from tests.conftest import SENTIMENT, ProjectFactory, scripted


async def stored(engine: Engine) -> list[dict[str, Any]]:
    await engine.flush_traces()
    store = await engine.store()
    return [json.loads(c.data or "") for c in await store.calls(data=True)]


def traced(rate: float = 1.0, **more: Any) -> dict[str, Any]:
    return {"traces": {"sample_rate": rate, **more}}


async def test_with_the_default_config_nothing_is_traced_or_stored(
        make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project())
    await engine.run("sentiment", {"text": "Love it"})
    assert not engine.traces.enabled
    await engine.flush_traces()
    assert engine.traces.written == 0
    assert await (await engine.store()).calls() == []
    await engine.aclose()


async def test_a_traced_call_keeps_prompt_attempts_reask_and_stage_timings(
        make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project(
        backends={"primary": scripted('{"sentiment": "great"}', '{"sentiment": "positive"}')},
        extra=traced()))
    token = request_id.set("req-1")
    try:
        result = await engine.run("sentiment", {"text": "Love it"}, tenant=None)
    finally:
        request_id.reset(token)
    [trace] = await stored(engine)
    assert trace["request_id"] == "req-1" and trace["status"] == "ok"
    assert trace["feature"] == "sentiment" and trace["route"] == "default"
    assert trace["messages"][-1] == {"role": "user", "content": "Review: Love it"}
    first, second = trace["attempts"]
    assert first["raw"] == '{"sentiment": "great"}' and first["errors"] and not first["reask"]
    assert second["reask"] and second["errors"] == [] and second["backend"] == "primary"
    assert trace["output"] == result.output == {"sentiment": "positive"}
    assert {"input", "render", "budget", "cache", "upstream", "validate"} <= \
        set(trace["stages_ms"])
    assert trace["usage"]["tokens_in"] == result.meta.tokens_in
    [dispatch] = trace["dispatches"][:1]
    assert dispatch["backend"] == "primary" and dispatch["error"] is None
    await engine.aclose()


async def test_a_failed_call_is_traced_with_every_attempt(make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project(
        backends={"primary": scripted("not json at all")}, extra=traced()))
    with pytest.raises(OutputError):
        await engine.run("sentiment", {"text": "Love it"})
    [trace] = await stored(engine)
    assert trace["status"] == "error" and trace["error"]["type"] == "OutputError"
    assert len(trace["attempts"]) == 3
    assert all(a["raw"] == "not json at all" for a in trace["attempts"])
    await engine.aclose()


async def test_a_cache_hit_is_traced_as_cached(make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project(extra=traced()))
    await engine.run("sentiment", {"text": "Love it"})
    await engine.run("sentiment", {"text": "Love it"})
    newest, oldest = await stored(engine)
    assert (oldest["cached"], newest["cached"]) == (False, True)
    assert newest["attempts"] == []
    await engine.aclose()


async def test_sample_rate_and_per_feature_settings(make_project: ProjectFactory) -> None:
    other = {**SENTIMENT, "name": "other"}
    engine = Engine.from_config(make_project(
        [SENTIMENT, other],
        extra={"traces": {"sample_rate": 0, "features": {"other": {"sample_rate": 1}}}}))
    await engine.run("sentiment", {"text": "a"})
    await engine.run("other", {"text": "b"})
    assert [t["feature"] for t in await stored(engine)] == ["other"]
    await engine.aclose()


def test_a_trace_setting_for_an_unknown_feature_fails_the_load(
        make_project: ProjectFactory) -> None:
    with pytest.raises(ContractError, match=r"traces\.features\.nope"):
        Engine.from_config(make_project(extra={"traces": {"features": {"nope": {}}}}))


def test_sampling_follows_the_rate() -> None:
    draws = iter([0.1, 0.6, 0.2, 0.9])
    writer = TraceWriter(TracesConfig(sample_rate=0.5), ["f"], store=None,  # type: ignore[arg-type]
                         rng=lambda: next(draws))
    assert [writer.sample("f") is not None for _ in range(4)] == [True, False, True, False]
    assert writer.sample("unknown") is None


async def test_redacted_input_paths_are_removed_from_the_whole_trace(
        make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project(
        backends={"primary": scripted('{"sentiment": "positive"}')},
        extra=traced(redact=["text"])))
    await engine.run("sentiment", {"text": "Jane Doe loves it"})
    [trace] = await stored(engine)
    assert "Jane Doe" not in json.dumps(trace)
    assert trace["input"] == {"text": "[redacted]"}
    assert trace["messages"][-1]["content"] == "Review: [redacted]"
    await engine.aclose()


def test_redaction_reaches_nested_and_wildcard_paths() -> None:
    data = {"input": {"user": {"email": "a@b.example"}, "items": [{"n": "secret-1"}]},
            "output": {"echo": "mail a@b.example about secret-1"}}
    clean = redact(data, ["user.email", "items.*.n"])
    assert clean["input"] == {"user": {"email": "[redacted]"}, "items": [{"n": "[redacted]"}]}
    assert clean["output"] == {"echo": "mail [redacted] about [redacted]"}
    assert redact(data, ["no.such.path"]) == data


def test_a_trace_is_cut_to_its_byte_bound() -> None:
    data = {"request_id": "r", "messages": [{"role": "user", "content": "é" * 50_000}],
            "attempts": [{"raw": "x" * 50_000}]}
    text = bounded(data, 4096)
    assert len(text.encode()) <= 4096
    assert json.loads(text)["truncated"] is True
    assert bounded({"request_id": "r"}, 4096) == '{"request_id": "r"}'


async def test_expired_traces_are_purged(make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project(extra=traced(retention_days=1)))
    await engine.run("sentiment", {"text": "a"})
    store = await engine.store()
    await engine.flush_traces()
    assert await store.purge_traces(datetime.now(UTC)) == 0
    assert await store.purge_traces(datetime.now(UTC) + timedelta(days=2)) == 1
    assert await store.calls() == []
    await engine.aclose()


async def test_a_store_that_fails_costs_the_trace_not_the_call(
        make_project: ProjectFactory, caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine.from_config(make_project(extra=traced()))

    async def broken() -> Any:
        raise OSError("store down")

    engine.traces._store = broken
    result = await engine.run("sentiment", {"text": "a"})
    assert result.output == {"sentiment": "positive"}
    await engine.flush_traces()
    assert engine.traces.failed == 1
    assert "could not be stored" in caplog.text
    await engine.aclose()


async def test_a_full_queue_drops_traces_instead_of_growing(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("featurelm.engine.traces.QUEUE_LIMIT", 2)
    monkeypatch.setattr("featurelm.engine.traces.CLOSE_WAIT_S", 0.2)

    async def never() -> Any:
        import asyncio
        await asyncio.Event().wait()

    writer = TraceWriter(TracesConfig(sample_rate=1), ["f"], store=never)
    for _ in range(5):
        writer.submit(Trace("r", "f", 1, None, None, TraceSettings(), {}))
    assert writer.dropped >= 2
    await writer.aclose()
    # The batch stuck in the hung store counts as not stored.
    assert "2 trace(s) not stored at shutdown" in caplog.text


async def test_explain_returns_the_trace_of_a_call_and_stores_nothing(
        make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project(backends={"primary": scripted("nope")}))
    feature = await engine.resolve("sentiment")
    result, trace = await engine.explain(feature, {"text": "a"})
    assert result is None and trace.status == "error" and len(trace.attempts) == 3
    await engine.flush_traces()
    assert engine.traces.written == 0
    await engine.aclose()
