"""/metrics shows what calls cannot: a result cache or tenant store that fails while the calls
around it still succeed (or answer 503) moves a counter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from featurelm import Engine
from featurelm.serving.app import create_app
from tests.conftest import ProjectFactory, free_port


@asynccontextmanager
async def served(config: Path) -> AsyncIterator[tuple[Engine, httpx.AsyncClient]]:
    engine = Engine.from_config(config)
    transport = httpx.ASGITransport(app=create_app(engine), raise_app_exceptions=False)
    async with engine, httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield engine, http


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    """Every sample on /metrics, by name and labels: `name{label="value"}`."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


async def test_a_cache_at_a_closed_port_serves_calls_and_counts_its_failures(
        make_project: ProjectFactory) -> None:
    config = make_project(extra={"auth": "off", "cache": f"redis://127.0.0.1:{free_port()}/0"})
    async with served(config) as (engine, http):
        before = await scrape(http)
        assert before["featurelm_cache_failures_total"] == 0
        for _ in range(2):
            result = await engine.run("sentiment", {"text": "Lovely."})
            assert result.output == {"sentiment": "positive"} and not result.meta.cached
        after = await scrape(http)
    # The first lookup fails; then the cache is left alone for a while (one timeout per
    # interval, not one per call), so the count is at least one and calls went on without it.
    assert after["featurelm_cache_failures_total"] >= 1
    assert engine.stats().cache_failures == after["featurelm_cache_failures_total"]


async def test_a_working_cache_counts_lookups_and_stores(make_project: ProjectFactory) -> None:
    config = make_project(extra={"auth": "off", "cache": "memory"})
    async with served(config) as (engine, http):
        for _ in range(3):
            await engine.run("sentiment", {"text": "Lovely."})
        samples = await scrape(http)
    assert samples['featurelm_cache_lookups_total{result="miss"}'] == 1
    assert samples['featurelm_cache_lookups_total{result="hit"}'] == 2
    assert samples["featurelm_cache_stores_total"] == 1
    assert samples["featurelm_cache_failures_total"] == 0


async def test_a_store_that_cannot_open_answers_503_and_counts_the_failure(
        make_project: ProjectFactory) -> None:
    # With auth off the store opens on the first call that sends a key; nothing listens on
    # the store's port.
    config = make_project(extra={"auth": "off",
                                 "store": f"postgresql://127.0.0.1:{free_port()}/test"})
    async with served(config) as (_, http):
        assert (await scrape(http))["featurelm_store_failures_total"] == 0
        response = await http.post("/v1/features/sentiment", json={"input": {"text": "Hi."}},
                                   headers={"Authorization": "Bearer not-checked-yet"})
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert (await scrape(http))["featurelm_store_failures_total"] == 1
