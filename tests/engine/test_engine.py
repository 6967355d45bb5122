"""Engine.run: the path of one call, from input to schema-valid output with meta."""

from __future__ import annotations

import copy

import pytest

from featurelm.engine import Engine, InputError, NotFoundError, OutputError, RunOptions
from featurelm.engine.backends.scripted import ScriptedBackend
from tests.conftest import SENTIMENT, ProjectFactory, scripted


def backend_of(engine: Engine, name: str = "primary") -> ScriptedBackend:
    backend = engine.backends[name]
    assert isinstance(backend, ScriptedBackend)
    return backend


async def test_run_returns_valid_output_and_meta(make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project())
    result = await engine.run("sentiment", {"text": "Love it"})
    assert result.output == {"sentiment": "positive"}
    meta = result.meta
    assert (meta.feature, meta.backend, meta.route, meta.attempts, meta.cached) == \
        ("sentiment", "primary", "default", 1, False)
    assert meta.tokens_in > 0 and meta.tokens_out > 0 and meta.latency_ms >= 0


async def test_prompt_has_schema_instruction_examples_and_input(
        make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project())
    await engine.run("sentiment", {"text": "Love it"})
    sent = backend_of(engine).requests[0]
    roles = [m.role for m in sent.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert '"enum": ["positive", "negative", "neutral"]' in sent.messages[0].content
    assert sent.messages[2].content == '{"sentiment": "negative"}'
    assert sent.messages[3].content == "Review: Love it"
    assert sent.output_schema == SENTIMENT["output"]
    assert sent.temperature == 0.0 and sent.max_tokens == 64


@pytest.mark.parametrize(("payload", "path"), [
    ({}, "$"),
    ({"text": 5}, "$.text"),
    ({"text": "x" * 2001}, "$.text"),
    ({"text": "ok", "extra": True}, "$"),
])
async def test_input_violating_the_schema_is_refused_before_any_backend_call(
        make_project: ProjectFactory, payload: dict[str, object], path: str) -> None:
    engine = Engine.from_config(make_project())
    with pytest.raises(InputError) as caught:
        await engine.run("sentiment", payload)
    assert [v.path for v in caught.value.violations] == [path]
    assert backend_of(engine).calls == 0


async def test_non_object_and_oversized_inputs_are_refused(make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project())
    with pytest.raises(InputError, match="JSON object"):
        await engine.run("sentiment", ["text"])
    with pytest.raises(InputError, match="byte limit") as caught:
        await engine.run("sentiment", {"text": "x" * 300_000})
    assert caught.value.status == 413


async def test_unknown_feature(make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project())
    with pytest.raises(NotFoundError, match="unknown feature 'nope'"):
        await engine.run("nope", {})


async def test_only_allowed_routes_can_be_chosen(make_project: ProjectFactory) -> None:
    feature = copy.deepcopy(SENTIMENT)
    feature["model"]["allowed_routes"] = ["big"]
    engine = Engine.from_config(make_project(
        [feature],
        backends={"primary": scripted('{"sentiment": "neutral"}'),
                  "large": scripted('{"sentiment": "positive"}'),
                  "other": scripted("{}")},
        routes={"default": {"backends": ["primary"]}, "big": {"backends": ["large"]},
                "secret": {"backends": ["other"]}}))
    result = await engine.run("sentiment", {"text": "x"}, options=RunOptions(route="big"))
    assert (result.meta.route, result.meta.backend) == ("big", "large")
    with pytest.raises(InputError, match="not allowed"):
        await engine.run("sentiment", {"text": "x"}, options=RunOptions(route="secret"))


async def test_invalid_output_is_never_returned(make_project: ProjectFactory) -> None:
    engine = Engine.from_config(make_project(backends={
        "primary": scripted('{"sentiment": "furious"}')}))
    with pytest.raises(OutputError) as caught:
        await engine.run("sentiment", {"text": "x"})
    assert len(caught.value.attempts) == 3


async def test_tenant_salt_is_derived_by_the_server_and_differs_per_tenant(
        make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURELM_SECRET", "s3cret")
    async with Engine.from_config(make_project()) as engine:
        for tenant in ("acme", "globex"):
            await (await engine.store()).create_tenant(tenant, actor="test")
        await engine.run("sentiment", {"text": "x"}, tenant="acme")
        await engine.run("sentiment", {"text": "x"}, tenant="globex")
    salts = [r.cache_salt for r in backend_of(engine).requests]
    assert salts[0] and salts[1] and salts[0] != salts[1]
    assert "acme" not in salts[0] and "s3cret" not in salts[0]
    assert Engine.from_config(make_project()).tenant_salt("acme") == salts[0]
