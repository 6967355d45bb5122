"""Two engine replicas (real `featurelm serve` processes) sharing the real local Redis and
PostgreSQL, with an OpenAI-compatible backend between them: overrides converge, the cache
and coalescing are shared, and a replica stopped mid-traffic loses no accepted request."""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from featurelm.engine.testing import FaultServer
from tests.conftest import SENTIMENT
from tests.serving.conftest import LiveServer, start_server, write_project

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
FEATURE: dict[str, Any] = {**SENTIMENT, "overridable": ["prompt.system"]}
OVERRIDE = "prompt:\n  system: You classify reviews for the acme shop, tersely.\n"


@dataclass
class Cluster:
    a: LiveServer
    b: LiveServer
    backend: FaultServer

    def headers(self, tenant: str = "acme") -> dict[str, str]:
        return self.a.keys.bearer(tenant)


def fresh_input() -> dict[str, Any]:
    return {"input": {"text": f"review {secrets.token_hex(6)}"}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tag = secrets.token_hex(6)
    schema, prefix = f"flm_replicas_{tag}", f"flm-replicas-{tag}:"
    backend = FaultServer(latency=0.4).start()
    config = write_project(
        tmp_path_factory.mktemp("replicas"), features=[FEATURE],
        backends={"vllm": {"kind": "openai", "model": "gemma", "options": {
            "base_urls": [backend.url]}}},
        routes={"default": {"backends": ["vllm"]}},
        cache="redis://127.0.0.1:6379/0", cache_settings={"key_prefix": prefix},
        store=f"{PG_URL}?schema={schema}", auth="required", override_refresh_s=0.5,
        http={"drain_s": 0.5, "shutdown_grace_s": 10, "rate_limit_per_minute": 100_000})
    a = start_server(config, ["acme", "globex"])
    b = start_server(config, [])
    try:
        yield Cluster(a, b, backend)
    finally:
        for server in (a, b):
            server.stop()
        backend.stop()
        client = redis.Redis(host="127.0.0.1", port=6379)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
        asyncio.run(drop_schema(schema))


async def drop_schema(schema: str) -> None:
    engine = create_async_engine(PG_URL.replace("postgresql://", "postgresql+asyncpg://"))
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await engine.dispose()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def call(http: httpx.AsyncClient, server: LiveServer, body: dict[str, Any],
               headers: dict[str, str]) -> httpx.Response:
    return await http.post(f"{server.url}/v1/features/sentiment", json=body, headers=headers)


async def test_an_override_activated_on_one_replica_is_served_by_the_other(
        cluster: Cluster, http: httpx.AsyncClient) -> None:
    put = await http.put(f"{cluster.a.url}/v1/tenants/acme/overrides/sentiment",
                         content=OVERRIDE, headers=cluster.headers())
    assert put.status_code == 201, put.text
    version = put.json()["version"]
    activated = time.monotonic()
    while True:
        response = await call(http, cluster.b, fresh_input(), cluster.headers())
        assert response.status_code == 200, response.text
        if response.json()["meta"]["override_version"] == version:
            break
        assert time.monotonic() - activated < 5, "replica b never saw the activation"
        await asyncio.sleep(0.2)
    prompt = cluster.backend.bodies[-1]["messages"][0]["content"]
    assert "acme shop" in prompt
    # The other tenant still gets the base feature on both replicas.
    for server in (cluster.a, cluster.b):
        other = await call(http, server, fresh_input(), cluster.headers("globex"))
        assert other.json()["meta"]["override_version"] is None


async def test_an_answer_cached_by_one_replica_is_a_hit_on_the_other(
        cluster: Cluster, http: httpx.AsyncClient) -> None:
    body = fresh_input()
    first = await call(http, cluster.a, body, cluster.headers("globex"))
    calls = cluster.backend.completions
    second = await call(http, cluster.b, body, cluster.headers("globex"))
    assert first.json()["meta"]["cached"] is False
    assert second.json()["meta"]["cached"] is True
    assert second.json()["output"] == first.json()["output"]
    assert cluster.backend.completions == calls


async def test_identical_calls_to_both_replicas_reach_the_backend_once(
        cluster: Cluster, http: httpx.AsyncClient) -> None:
    body = fresh_input()
    calls = cluster.backend.completions
    responses = await asyncio.gather(*(
        call(http, server, body, cluster.headers("globex"))
        for server in [cluster.a, cluster.b] * 10))
    assert [r.status_code for r in responses] == [200] * 20
    assert len({r.text.split('"meta"')[0] for r in responses}) == 1  # one output for all
    assert cluster.backend.completions == calls + 1


async def test_a_replica_stopped_mid_traffic_loses_no_accepted_request(
        cluster: Cluster, http: httpx.AsyncClient) -> None:
    """Like a load balancer: a request the stopping replica refuses goes to the other one;
    a request it accepted must finish there."""
    outcomes: list[tuple[str, int]] = []

    async def one(delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            response = await call(http, cluster.a, fresh_input(), cluster.headers("globex"))
            outcomes.append(("a", response.status_code))
        except httpx.ConnectError:
            response = await call(http, cluster.b, fresh_input(), cluster.headers("globex"))
            outcomes.append(("b", response.status_code))

    traffic = [asyncio.create_task(one(i * 0.05)) for i in range(40)]
    await asyncio.sleep(0.6)  # requests are in flight on a (each takes the backend's 0.4 s)
    cluster.a.process.send_signal(signal.SIGTERM)
    await asyncio.gather(*traffic)
    assert [status for _, status in outcomes] == [200] * 40
    assert {"a", "b"} <= {where for where, _ in outcomes}, "traffic spanned the shutdown"
    assert await asyncio.to_thread(cluster.a.process.wait, 15) == 0
