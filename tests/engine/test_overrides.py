"""Tenant overrides: checked before they are kept, versioned, resolved per tenant, converging."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from featurelm.engine import ContractError, Engine, NotFoundError
from featurelm.engine.backends.scripted import ScriptedBackend
from featurelm.engine.loader import LoadedFeature
from featurelm.engine.store import Store
from tests.conftest import SENTIMENT, ProjectFactory, scripted
from tests.engine.test_store import store_url  # noqa: F401  (fixture: SQLite and Postgres)

FEATURE: dict[str, Any] = {
    **SENTIMENT,
    "overridable": ["prompt.system", "prompt.user", "examples", "model.temperature"],
}
V1 = "prompt:\n  system: You are terse. Version one.\n"
V2 = "prompt:\n  system: You are chatty. Version two.\n"
REPLY = '{"sentiment": "positive"}'


def make_engine(make_project: ProjectFactory, url: str, **extra: Any) -> Engine:
    # No result cache: every run reaches the backend, so the tests see each rendered prompt.
    config = make_project([FEATURE], backends={"primary": scripted(REPLY)},
                          extra={"store": url, "override_refresh_s": 0.2, "cache": "none",
                                 **extra})
    return Engine.from_config(config)


@pytest.fixture
async def engine(make_project: ProjectFactory, store_url: str  # noqa: F811
                 ) -> AsyncIterator[Engine]:
    engine = make_engine(make_project, store_url)
    store = await engine.store()
    await store.create_tenant("acme", actor="ops")
    await store.create_tenant("globex", actor="ops")
    yield engine
    await engine.aclose()


def backend(engine: Engine) -> ScriptedBackend:
    found = engine.backends["primary"]
    assert isinstance(found, ScriptedBackend)
    return found


async def system_prompt(engine: Engine, tenant: str | None) -> str:
    """Run the feature as `tenant` and return the system turn the backend received."""
    await engine.run("sentiment", {"text": "fine"}, tenant=tenant)
    return backend(engine).requests[-1].messages[0].content


async def active_version(engine: Engine, tenant: str = "acme") -> int | None:
    active = await (await engine.store()).active_override(tenant, "sentiment")
    return None if active is None else active.version


async def test_an_override_changes_only_its_tenants_prompt(engine: Engine) -> None:
    base = await system_prompt(engine, None)
    result = await engine.overrides.apply("acme", "sentiment", V1, author="ann")
    assert (result.version, result.active) == (1, True)
    assert (await system_prompt(engine, "acme")).startswith("You are terse. Version one.")
    assert await system_prompt(engine, "globex") == base
    assert await system_prompt(engine, None) == base
    run = await engine.run("sentiment", {"text": "fine"}, tenant="acme")
    assert run.meta.override_version == 1 and run.output == {"sentiment": "positive"}


async def test_rollback_restores_the_exact_earlier_prompt(engine: Engine) -> None:
    await engine.overrides.apply("acme", "sentiment", V1, author="ann")
    await engine.run("sentiment", {"text": "fine"}, tenant="acme")
    v1_messages = backend(engine).requests[-1].messages
    await engine.overrides.apply("acme", "sentiment", V2, author="ann")
    assert "Version two." in await system_prompt(engine, "acme")

    await engine.overrides.rollback("acme", "sentiment", 1, author="bob")
    result = await engine.run("sentiment", {"text": "fine"}, tenant="acme")
    assert backend(engine).requests[-1].messages == v1_messages
    assert result.meta.override_version == 1
    versions = await engine.overrides.list_versions("acme", "sentiment")
    assert [(v.version, v.active, v.author) for v in versions] == \
        [(1, True, "ann"), (2, False, "ann")]


async def test_deactivating_serves_the_base_feature_again(engine: Engine) -> None:
    base = await system_prompt(engine, "acme")
    await engine.overrides.apply("acme", "sentiment", V1, author="ann")
    await engine.overrides.deactivate("acme", "sentiment", author="ann")
    assert await system_prompt(engine, "acme") == base


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
       "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"


@pytest.mark.parametrize(("text", "problem"), [
    ("output:\n  type: object\n", "output schema is the product's contract"),
    ("input:\n  type: object\n", "input schema is the product's contract"),
    ("cache:\n  ttl: 5\n", "does not allow overriding cache.ttl"),
    ("model:\n  max_attempts: 8\n", "does not allow overriding model.max_attempts"),
    ("prompt:\n  system_file: ../../etc/passwd\n", "cannot choose template files"),
    ("name: other\n", "feature name cannot be changed"),
    ("prompt:\n  system: \"{{ ''.__class__.__mro__ }}\"\n",
     "access to attribute '__mro__' is not allowed"),
    ("prompt:\n  system: \"{{ cycler.__init__.__globals__ }}\"\n", "is not allowed"),
    ("prompt:\n  system: \"{{ lipsum.__globals__ }}\"\n", "is not allowed"),
    ("prompt:\n  system: \"{% for i in range(99999) %}{{ text }}{% endfor %}\"\n",
     "rendered prompt exceeds"),
    ("prompt:\n  user: \"{{ text * 10000000 }}\"\n", "rendered-size limit"),
    ("prompt:\n  system: [unclosed\n", "invalid YAML"),
    (BOMB, "YAML anchors (&name) are not allowed"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("prompt:\n  system: !!python/object/apply:os.system [true]\n", "custom YAML tags"),
])
async def test_a_bad_override_is_refused_and_the_active_version_stays(
        engine: Engine, text: str, problem: str) -> None:
    await engine.overrides.apply("acme", "sentiment", V1, author="ann")
    with pytest.raises(ContractError) as caught:
        await engine.overrides.apply("acme", "sentiment", text, author="eve")
    assert problem in str(caught.value)
    assert await active_version(engine) == 1
    assert len(await engine.overrides.list_versions("acme")) == 1
    assert "Version one." in await system_prompt(engine, "acme")


async def test_an_override_of_a_huge_size_is_refused(engine: Engine) -> None:
    text = "prompt:\n  system: " + "x" * (engine.config.limits.max_yaml_bytes + 1) + "\n"
    with pytest.raises(ContractError, match=r"over the \d+-byte limit"):
        await engine.overrides.apply("acme", "sentiment", text, author="eve")
    assert await engine.overrides.list_versions("acme") == []


async def test_a_dry_run_shows_the_prompt_and_saves_nothing(engine: Engine) -> None:
    result = await engine.overrides.apply("acme", "sentiment", V1, author="ann", dry_run=True)
    assert (result.dry_run, result.version, result.active) == (True, None, False)
    assert result.rendered[0][0]["content"].startswith("You are terse. Version one.")
    assert await engine.overrides.list_versions("acme") == []


async def test_unknown_tenant_and_feature_are_not_found(engine: Engine) -> None:
    with pytest.raises(NotFoundError, match="unknown tenant 'ghost'"):
        await engine.overrides.apply("ghost", "sentiment", V1, author="ann", dry_run=True)
    with pytest.raises(NotFoundError, match="unknown feature 'nope'"):
        await engine.overrides.apply("acme", "nope", V1, author="ann")
    with pytest.raises(NotFoundError, match="no version 3"):
        await engine.overrides.rollback("acme", "sentiment", 3, author="ann")


async def test_diff_of_two_versions(engine: Engine) -> None:
    await engine.overrides.apply("acme", "sentiment", V1, author="ann")
    await engine.overrides.apply("acme", "sentiment", V2, author="ann")
    diff = await engine.overrides.diff("acme", "sentiment", 1, 2)
    assert "-  system: You are terse. Version one.\n" in diff
    assert "+  system: You are chatty. Version two.\n" in diff
    assert diff.startswith("--- sentiment v1\n+++ sentiment v2\n")


async def test_the_eval_gate_refuses_an_override_below_threshold(engine: Engine) -> None:
    async def failing_gate(candidate: LoadedFeature, tenant: str) -> float:
        assert candidate.spec.prompt.system == "You are terse. Version one."
        return 0.5

    engine.overrides.eval_gate = failing_gate
    with pytest.raises(ContractError, match="eval pass rate 50% is below the threshold 80%"):
        await engine.overrides.apply("acme", "sentiment", V1, author="ann", run_evals=True)
    assert await engine.overrides.list_versions("acme") == []


async def test_another_replica_sees_an_activation_within_the_refresh_interval(
        engine: Engine, make_project: ProjectFactory, tmp_path: Path) -> None:
    other = Engine.from_config(tmp_path / "featurelm.yaml")  # same config, same store
    try:
        assert (await other.resolve("sentiment", "acme")).override_version is None
        await engine.overrides.apply("acme", "sentiment", V1, author="ann")
        applied = time.monotonic()
        while (await other.resolve("sentiment", "acme")).override_version != 1:
            assert time.monotonic() - applied < other.config.override_refresh_s + 1.0
            await asyncio.sleep(0.02)
        await engine.overrides.rollback("acme", "sentiment", 1, author="ann")
        await engine.overrides.deactivate("acme", "sentiment", author="ann")
        deactivated = time.monotonic()
        while (await other.resolve("sentiment", "acme")).override_version is not None:
            assert time.monotonic() - deactivated < other.config.override_refresh_s + 1.0
            await asyncio.sleep(0.02)
    finally:
        await other.aclose()


async def test_a_call_in_flight_finishes_on_the_version_it_started_with(
        make_project: ProjectFactory, store_url: str) -> None:  # noqa: F811
    config = make_project([FEATURE], backends={"primary": {**scripted(REPLY),
                                                           "options": {"replies": [REPLY],
                                                                       "delay": 0.3}}},
                          extra={"store": store_url, "cache": "none"})
    engine = Engine.from_config(config)
    try:
        store: Store = await engine.store()
        await store.create_tenant("acme", actor="ops")
        await engine.overrides.apply("acme", "sentiment", V1, author="ann")
        in_flight = asyncio.create_task(engine.run("sentiment", {"text": "x"}, tenant="acme"))
        while backend(engine).calls == 0:
            await asyncio.sleep(0.01)
        await engine.overrides.apply("acme", "sentiment", V2, author="ann")
        assert (await in_flight).meta.override_version == 1
        assert "Version one." in backend(engine).requests[0].messages[0].content
        after = await engine.run("sentiment", {"text": "x"}, tenant="acme")
        assert after.meta.override_version == 2
    finally:
        await engine.aclose()


async def test_a_version_the_base_feature_no_longer_accepts_serves_the_base(
        engine: Engine, make_project: ProjectFactory, store_url: str,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    await engine.overrides.apply("acme", "sentiment", V1, author="ann")
    narrowed = {**FEATURE, "overridable": ["examples"]}
    changed = Engine.from_config(make_project([narrowed], backends={"primary": scripted(REPLY)},
                                              extra={"store": store_url}))
    try:
        resolved = await changed.resolve("sentiment", "acme")
        assert resolved.override_version is None
        assert "no longer applies" in caplog.text
        with pytest.raises(ContractError, match=r"does not allow overriding prompt\.system"):
            await changed.overrides.rollback("acme", "sentiment", 1, author="ann")
    finally:
        await changed.aclose()
