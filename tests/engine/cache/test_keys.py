"""Cache keys: every field that decides an output separates entries; key order never does."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from featurelm.engine import Engine
from featurelm.engine.cache import BackendId, CacheKeys, cache_keys
from featurelm.engine.loader import LoadedFeature
from featurelm.engine.types import CompletionRequest, Message
from tests.conftest import SENTIMENT, ProjectFactory

CHAIN = [BackendId("primary", "scripted", "m1"), BackendId("fallback", "openai", "m2")]


@pytest.fixture
def feature(make_project: ProjectFactory) -> LoadedFeature:
    engine = Engine.from_config(make_project([SENTIMENT]))
    loaded = engine.registry.get("sentiment")
    assert loaded is not None
    return loaded


@pytest.fixture
def request_() -> CompletionRequest:
    return CompletionRequest(messages=(Message("system", "Classify."), Message("user", "ab")),
                             temperature=0.0, max_tokens=64, params={"top_p": 0.9, "seed": 7})


def keys(feature: LoadedFeature, request: CompletionRequest, tenant: str | None = "acme",
         chain: list[BackendId] = CHAIN) -> CacheKeys:
    return cache_keys(feature, request, tenant=tenant, chain=chain)


def test_keys_are_stable_and_one_per_backend_of_the_chain(
        feature: LoadedFeature, request_: CompletionRequest) -> None:
    first, second = keys(feature, request_), keys(feature, request_)
    assert first == second
    assert [name for name, _ in first.lookup] == ["primary", "fallback"]
    assert len({key for _, key in first.lookup} | {first.flight}) == 3
    assert first.entry_for("fallback") == first.lookup[1][1]
    assert first.entry_for("elsewhere") is None


def test_every_field_that_decides_the_output_separates_entries(
        feature: LoadedFeature, request_: CompletionRequest) -> None:
    renamed = replace(feature, spec=feature.spec.model_copy(update={"name": "other"}))
    variants = {
        "base": keys(feature, request_),
        "tenant": keys(feature, request_, tenant="globex"),
        "no tenant": keys(feature, request_, tenant=None),
        "feature": keys(renamed, request_),
        "contract": keys(replace(feature, contract_hash="0" * 64), request_),
        "override version": keys(replace(feature, override_version=2), request_),
        "output schema": keys(replace(feature, output_schema_hash="1" * 64), request_),
        "messages": keys(feature, replace(request_, messages=(Message("user", "ab"),))),
        "role": keys(feature, replace(request_, messages=(
            Message("user", "Classify."), Message("user", "ab")))),
        "split": keys(feature, replace(request_, messages=(
            Message("system", "Classify.a"), Message("user", "b")))),
        "temperature": keys(feature, replace(request_, temperature=0.5)),
        "max tokens": keys(feature, replace(request_, max_tokens=65)),
        "params": keys(feature, replace(request_, params={"top_p": 0.9, "seed": 8})),
        "model": keys(feature, request_, chain=[replace(CHAIN[0], model="m3"), CHAIN[1]]),
        "kind": keys(feature, request_, chain=[replace(CHAIN[0], kind="openai"), CHAIN[1]]),
    }
    primary = {name: k.lookup[0][1] for name, k in variants.items()}
    flights = {name: k.flight for name, k in variants.items()}
    assert len(set(primary.values())) == len(variants), primary
    assert len(set(flights.values())) == len(variants), flights


def test_key_order_never_matters(feature: LoadedFeature, request_: CompletionRequest) -> None:
    reordered = replace(request_, params={"seed": 7, "top_p": 0.9})
    assert keys(feature, reordered) == keys(feature, request_)


def test_an_entry_is_found_from_any_chain_holding_its_backend(
        feature: LoadedFeature, request_: CompletionRequest) -> None:
    full = keys(feature, request_)
    fallback_only = keys(feature, request_, chain=[CHAIN[1]])
    assert fallback_only.lookup[0] == full.lookup[1]
    assert fallback_only.flight != full.flight


def test_shared_features_pool_tenants_only_without_an_override(
        make_project: ProjectFactory, request_: CompletionRequest) -> None:
    shared = copy.deepcopy(SENTIMENT)
    shared["cache"] = {"shared": True}
    engine = Engine.from_config(make_project([shared]))
    pooled = engine.registry.get("sentiment")
    assert pooled is not None
    assert keys(pooled, request_, "acme") == keys(pooled, request_, "globex") \
        == keys(pooled, request_, None)
    overridden = replace(pooled, override_version=1)
    assert keys(overridden, request_, "acme") != keys(overridden, request_, "globex")
    # A tenant literally named "shared" keeps a namespace of its own (same contract hash,
    # only the policy flag differs).
    unshared = replace(pooled, spec=pooled.spec.model_copy(update={
        "cache": pooled.spec.cache.model_copy(update={"shared": False})}))
    assert keys(unshared, request_, "shared") != keys(pooled, request_, "acme")
