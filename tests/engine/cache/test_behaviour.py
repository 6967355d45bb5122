"""The result cache as a caller sees it, once over the memory cache and once over Redis."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from featurelm.engine import BackendError, OutputError, RunOptions
from tests.conftest import SENTIMENT
from tests.engine.cache.conftest import (
    POSITIVE,
    CacheUnderTest,
    EngineFactory,
    Script,
    burst,
    wait_until,
)

LOVE = {"text": "Love it"}


def sentiment(**changes: Any) -> dict[str, Any]:
    """The SENTIMENT feature with top-level sections updated (merged one level deep)."""
    feature = copy.deepcopy(SENTIMENT)
    for key, value in changes.items():
        feature[key] = {**feature.get(key, {}), **value} if isinstance(value, dict) else value
    return feature


async def test_a_repeated_call_is_a_hit_that_reports_no_new_usage(
        make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine()
    first = await engine.run("sentiment", LOVE)
    second = await engine.run("sentiment", LOVE)
    assert script.calls == 1
    assert second.output == first.output == {"sentiment": "positive"}
    assert first.meta.cached is False and first.meta.attempts == 1
    meta = second.meta
    assert (meta.cached, meta.attempts, meta.tokens_in, meta.tokens_out, meta.cost_usd) == \
        (True, 0, 0, 0, 0.0)
    assert (meta.backend, meta.model) == (first.meta.backend, first.meta.model)


async def test_different_inputs_miss(make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine()
    await engine.run("sentiment", LOVE)
    result = await engine.run("sentiment", {"text": "Hate it"})
    assert script.calls == 2 and result.meta.cached is False


async def test_a_hit_hands_out_its_own_copy(make_engine: EngineFactory) -> None:
    engine = make_engine()
    (await engine.run("sentiment", LOVE)).output["sentiment"] = "mutated"
    (await engine.run("sentiment", LOVE)).output["sentiment"] = "mutated again"
    assert (await engine.run("sentiment", LOVE)).output == {"sentiment": "positive"}


async def test_entries_expire_after_the_feature_ttl(
        make_engine: EngineFactory, script: Script, cache: CacheUnderTest) -> None:
    engine = make_engine([sentiment(cache={"ttl": 1})])
    await engine.run("sentiment", LOVE)
    assert (await engine.run("sentiment", LOVE)).meta.cached
    await cache.expire(engine)
    assert not (await engine.run("sentiment", LOVE)).meta.cached
    assert script.calls == 2


async def test_two_tenants_with_the_same_input_make_two_backend_calls(
        make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine()
    for tenant in ("acme", "globex"):
        await (await engine.store()).create_tenant(tenant, actor="test")
    acme = await engine.run("sentiment", LOVE, tenant="acme")
    globex = await engine.run("sentiment", LOVE, tenant="globex")
    assert script.calls == 2 and not acme.meta.cached and not globex.meta.cached
    assert (await engine.run("sentiment", LOVE, tenant="acme")).meta.cached
    assert script.calls == 2


async def test_a_shared_feature_pools_tenants_only_without_an_override(
        make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine([sentiment(cache={"shared": True},
                                    overridable=["prompt.system", "cache.ttl"])])
    await engine.run_feature(engine.registry.get("sentiment"), LOVE,  # type: ignore[arg-type]
                             tenant="acme")
    pooled = await engine.run_feature(engine.registry.get("sentiment"),  # type: ignore[arg-type]
                                      LOVE, tenant="globex")
    assert pooled.meta.cached and script.calls == 1
    # An override that leaves the prompt as it was still leaves the shared pool.
    overridden = engine.overrides.build("globex", "sentiment", "cache: {ttl: 60}\n", 1)
    result = await engine.run_feature(overridden, LOVE, tenant="globex")
    assert not result.meta.cached and script.calls == 2


async def test_a_tenant_override_change_misses_the_old_entries(
        make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine([sentiment(overridable=["prompt.system", "cache.ttl"])])
    v1 = engine.overrides.build("acme", "sentiment", "cache: {ttl: 60}\n", 1)
    await engine.run_feature(v1, LOVE, tenant="acme")
    assert (await engine.run_feature(v1, LOVE, tenant="acme")).meta.cached
    # Same text activated as a new version, then a different text: both start afresh.
    v2 = engine.overrides.build("acme", "sentiment", "cache: {ttl: 60}\n", 2)
    assert not (await engine.run_feature(v2, LOVE, tenant="acme")).meta.cached
    v3 = engine.overrides.build("acme", "sentiment", "cache: {ttl: 120}\n", 3)
    assert not (await engine.run_feature(v3, LOVE, tenant="acme")).meta.cached
    assert script.calls == 3


async def test_inputs_that_differ_only_in_key_order_hit(
        make_engine: EngineFactory, script: Script) -> None:
    feature = sentiment(input={"properties": {"text": {"type": "string"},
                                              "lang": {"type": "string"}}},
                        prompt={"user": "Review ({{ lang }}): {{ text }}"}, examples=[])
    engine = make_engine([feature])
    await engine.run("sentiment", {"text": "Love it", "lang": "en"})
    result = await engine.run("sentiment", {"lang": "en", "text": "Love it"})
    assert result.meta.cached and script.calls == 1


async def test_no_cache_skips_the_read_but_stores(
        make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine()
    await engine.run("sentiment", LOVE)
    fresh = await engine.run("sentiment", LOVE, options=RunOptions(cache_read=False))
    assert not fresh.meta.cached and script.calls == 2
    other = {"text": "Fine."}
    await engine.run("sentiment", other, options=RunOptions(cache_read=False))
    assert (await engine.run("sentiment", other)).meta.cached
    assert script.calls == 3


async def test_no_store_skips_the_write(make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine()
    await engine.run("sentiment", LOVE, options=RunOptions(cache_write=False))
    assert not (await engine.run("sentiment", LOVE)).meta.cached
    assert (await engine.run("sentiment", LOVE, options=RunOptions(cache_write=False))).meta.cached
    assert script.calls == 2


async def test_a_feature_with_caching_disabled_always_calls_the_backend(
        make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine([sentiment(cache={"enabled": False})])
    await engine.run("sentiment", LOVE)
    assert not (await engine.run("sentiment", LOVE)).meta.cached
    assert script.calls == 2


async def test_only_schema_valid_outputs_are_stored(make_engine: EngineFactory) -> None:
    invalid_then_valid = Script(reply=lambda request: '{"sentiment": "meh"}'
                                if len(invalid_then_valid.requests) == 1 else POSITIVE)
    engine = make_engine([sentiment(model={"max_attempts": 1})], script=invalid_then_valid)
    with pytest.raises(OutputError):
        await engine.run("sentiment", LOVE)
    result = await engine.run("sentiment", LOVE)
    assert result.output == {"sentiment": "positive"} and not result.meta.cached
    assert invalid_then_valid.calls == 2


async def test_100_concurrent_identical_calls_make_one_backend_call(
        make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine()
    script.hold()
    pending = burst([engine.run("sentiment", LOVE) for _ in range(100)])
    # Released only once all 100 have missed the cache, and so joined the call in flight.
    await wait_until(lambda: engine.cache.stats.misses == 100)
    script.release()
    outcomes = await pending
    assert script.calls == 1
    assert all(r.output == {"sentiment": "positive"} for r in outcomes)
    assert sum(not r.meta.cached for r in outcomes) == 1
    assert engine.cache.stats.coalesced == 99


async def test_an_error_reaches_every_waiter_and_nothing_is_stored(
        make_engine: EngineFactory) -> None:
    failing = Script(reply=BackendError("upstream down", backend="primary"))
    engine = make_engine(script=failing)
    failing.hold()
    pending = burst([engine.run("sentiment", LOVE) for _ in range(20)])
    await wait_until(lambda: engine.cache.stats.misses == 20)
    failing.release()
    outcomes = await pending
    assert failing.calls == 1
    assert all(isinstance(o, BackendError) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 1, "every waiter gets the same error"
    with pytest.raises(BackendError):
        await engine.run("sentiment", LOVE)
    assert failing.calls == 2


async def test_sampled_calls_with_caching_off_are_never_merged(
        make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine([sentiment(model={"temperature": 0.8}, cache={"enabled": False})])
    script.hold()
    pending = burst([engine.run("sentiment", LOVE) for _ in range(5)])
    await wait_until(lambda: script.calls == 5)  # all five reach the backend at once
    script.release()
    assert not any(r.meta.cached for r in await pending)


async def test_sampled_calls_with_caching_on_are_merged(
        make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine([sentiment(model={"temperature": 0.8})])
    script.hold()
    pending = burst([engine.run("sentiment", LOVE) for _ in range(5)])
    await wait_until(lambda: engine.cache.stats.misses == 5)
    script.release()
    assert sum(r.meta.cached for r in await pending) == 4 and script.calls == 1


async def test_greedy_calls_merge_even_with_caching_off(
        make_engine: EngineFactory, script: Script) -> None:
    engine = make_engine([sentiment(cache={"enabled": False})])
    script.hold()
    pending = burst([engine.run("sentiment", LOVE) for _ in range(5)])
    await wait_until(lambda: script.calls == 1)  # the others joined before it started
    script.release()
    assert sum(r.meta.cached for r in await pending) == 4 and script.calls == 1
    assert not (await engine.run("sentiment", LOVE)).meta.cached  # and nothing was stored


async def test_calls_that_opt_out_of_coalescing_each_reach_the_backend(
        make_engine: EngineFactory, script: Script) -> None:
    # Eval repeats run this way: merging them would hide a flaky model.
    engine = make_engine([sentiment()])
    own = RunOptions(cache_read=False, cache_write=False, coalesce=False)
    script.hold()
    pending = burst([engine.run("sentiment", LOVE, options=own) for _ in range(5)])
    await wait_until(lambda: script.calls == 5)
    script.release()
    assert not any(r.meta.cached for r in await pending)


async def test_an_entry_is_kept_under_the_backend_that_answered(
        make_engine: EngineFactory) -> None:
    down_once = Script(reply=lambda request: BackendError("down", backend="primary")
                       if down_once.calls == 1 else POSITIVE)
    fallback = Script(reply='{"sentiment": "neutral"}')
    engine = make_engine(
        [sentiment(model={"allowed_routes": ["fallback_only", "primary_only"]})],
        scripts={"primary": down_once, "fallback": fallback},
        routes={"default": {"backends": ["primary", "fallback"], "retries": 0},
                "fallback_only": {"backends": ["fallback"]},
                "primary_only": {"backends": ["primary"]}})
    answered = await engine.run("sentiment", LOVE)
    assert answered.meta.backend == "fallback" and answered.output == {"sentiment": "neutral"}
    # Stored under the backend that answered: found wherever that backend serves...
    for route in ("default", "fallback_only"):
        hit = await engine.run("sentiment", LOVE, options=RunOptions(route=route))
        assert hit.meta.cached and hit.meta.backend == "fallback" and hit.meta.route == route
    # ...and never served for a chain without it.
    primary = await engine.run("sentiment", LOVE, options=RunOptions(route="primary_only"))
    assert not primary.meta.cached and primary.output == {"sentiment": "positive"}
    assert (down_once.calls, fallback.calls) == (2, 1)
