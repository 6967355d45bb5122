"""Traces over HTTP: a tenant reads its own calls, the admin all, another tenant gets 404;
feedback on a call by its tenant or the admin, validated, counted in /metrics."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import scripted
from tests.serving.conftest import Client, ClientFactory

TRACED = {"traces": {"sample_rate": 1}}


async def call(client: Client, who: str, text: str = "Love it", rid: str | None = None
               ) -> str:
    headers = client.keys.bearer(who)
    if rid is not None:
        headers["X-Request-ID"] = rid
    response = await client.http.post("/v1/features/sentiment", json={"input": {"text": text}},
                                      headers=headers)
    assert response.status_code == 200, response.text
    await client.engine.flush_traces()
    return response.headers["x-request-id"]


@pytest.fixture
async def client(make_client: ClientFactory) -> Client:
    return await make_client(extra=TRACED, backends={
        "primary": scripted('{"sentiment": "great"}', '{"sentiment": "positive"}')})


async def test_a_trace_is_read_by_its_tenant_and_the_admin_and_not_by_another(
        client: Client) -> None:
    rid = await call(client, "acme")
    for who in ("acme", "admin"):
        response = await client.http.get(f"/v1/calls/{rid}", headers=client.keys.bearer(who))
        assert response.status_code == 200
        [trace] = response.json()["calls"]
        assert trace["tenant"] == "acme" and trace["request_id"] == rid
        assert trace["messages"][-1]["content"] == "Review: Love it"
        assert [a["raw"] for a in trace["attempts"]] == ['{"sentiment": "great"}',
                                                         '{"sentiment": "positive"}']
    other = await client.http.get(f"/v1/calls/{rid}", headers=client.keys.bearer("globex"))
    assert other.status_code == 404
    assert other.headers["content-type"].startswith("application/problem+json")
    assert "acme" not in other.text and "Love it" not in other.text


async def test_the_same_request_id_from_two_tenants_stays_apart(client: Client) -> None:
    await call(client, "acme", "from acme", rid="shared-id")
    await call(client, "globex", "from globex", rid="shared-id")
    mine = (await client.http.get("/v1/calls/shared-id", headers=client.keys.bearer("globex"))
            ).json()["calls"]
    assert [c["tenant"] for c in mine] == ["globex"]
    both = (await client.http.get("/v1/calls/shared-id", headers=client.keys.bearer("admin"))
            ).json()["calls"]
    assert sorted(c["tenant"] for c in both) == ["acme", "globex"]


async def test_calls_are_listed_in_pages_and_filtered(client: Client) -> None:
    for i in range(3):
        await call(client, "acme", f"text {i}")
    await call(client, "globex")
    first = (await client.http.get("/v1/calls?limit=2", headers=client.keys.bearer("acme"))
             ).json()
    assert len(first["calls"]) == 2 and first["next"] is not None
    rest = (await client.http.get(f"/v1/calls?limit=2&cursor={first['next']}",
                                  headers=client.keys.bearer("acme"))).json()
    assert len(rest["calls"]) == 1 and rest["next"] is None
    assert {c["tenant"] for c in first["calls"] + rest["calls"]} == {"acme"}
    admin = client.keys.bearer("admin")
    listed = (await client.http.get("/v1/calls?tenant=globex&since=1h&status=ok&feature="
                                    "sentiment", headers=admin)).json()["calls"]
    assert [c["tenant"] for c in listed] == ["globex"]
    refused = await client.http.get("/v1/calls?tenant=globex", headers=client.keys.bearer("acme"))
    assert refused.status_code == 404
    bad = await client.http.get("/v1/calls?since=yesterday", headers=admin)
    assert bad.status_code == 422 and "since" in bad.text


async def test_reading_calls_needs_a_key(client: Client) -> None:
    assert (await client.http.get("/v1/calls")).status_code == 401
    assert (await client.http.get("/v1/calls/x")).status_code == 401


async def test_with_the_default_config_nothing_is_stored(make_client: ClientFactory) -> None:
    client = await make_client()
    rid = await call(client, "acme")
    response = await client.http.get(f"/v1/calls/{rid}", headers=client.keys.bearer("admin"))
    assert response.status_code == 404


async def test_feedback_from_the_calling_tenant_and_the_admin_is_counted(
        client: Client) -> None:
    rid = await call(client, "acme")
    body: dict[str, Any] = {"request_id": rid, "score": 0.25, "label": "wrong",
                            "correction": {"sentiment": "negative"}, "comment": "sarcasm"}
    response = await client.http.post("/v1/feedback", json=body,
                                      headers=client.keys.bearer("acme"))
    assert response.status_code == 201, response.text
    response = await client.http.post("/v1/feedback", json={"request_id": rid, "score": 1},
                                      headers=client.keys.bearer("admin"))
    assert response.status_code == 201
    store = await client.engine.store()
    assert len(await store.feedback([rid])) == 2
    text = (await client.http.get("/metrics", headers=client.keys.bearer("admin"))).text
    assert 'featurelm_feedback_total{feature="sentiment",kind="score",tenant="acme",' \
           'version="base"} 2.0' in text
    assert 'kind="correction"' in text


async def test_feedback_on_another_tenants_call_is_404(client: Client) -> None:
    rid = await call(client, "acme")
    response = await client.http.post("/v1/feedback", json={"request_id": rid, "score": 0},
                                      headers=client.keys.bearer("globex"))
    assert response.status_code == 404
    assert await (await client.engine.store()).feedback([rid]) == []


@pytest.mark.parametrize(("body", "needle"), [
    ({"correction": {"sentiment": "furious"}}, "$.sentiment"),
    ({"correction": {"mood": "sad"}}, "output schema"),
    ({"score": 1.5}, "score"),
    ({}, "score, a label or a correction"),
    ({"score": 1, "extra": True}, "extra"),
])
async def test_invalid_feedback_is_a_422_naming_the_problem(
        client: Client, body: dict[str, Any], needle: str) -> None:
    rid = await call(client, "acme")
    response = await client.http.post("/v1/feedback", json={"request_id": rid, **body},
                                      headers=client.keys.bearer("acme"))
    assert response.status_code == 422
    assert needle in response.text


async def test_metrics_carry_enum_output_values_and_input_sizes(client: Client) -> None:
    await call(client, "acme")
    text = (await client.http.get("/metrics", headers=client.keys.bearer("admin"))).text
    assert 'featurelm_output_values_total{feature="sentiment",field="sentiment",' \
           'tenant="acme",value="positive"} 1.0' in text
    assert 'featurelm_input_bytes_count{feature="sentiment",tenant="acme"} 1.0' in text


async def test_input_sizes_count_each_batch_item(client: Client) -> None:
    inputs = [{"text": "ok"}, {"text": "x" * 1500}]
    response = await client.http.post("/v1/features/sentiment/batch", json={"inputs": inputs},
                                      headers=client.keys.bearer("acme"))
    assert response.status_code == 200, response.text
    text = (await client.http.get("/metrics", headers=client.keys.bearer("admin"))).text

    def bucket(le: str) -> str:
        return f'featurelm_input_bytes_bucket{{feature="sentiment",le="{le}",tenant="acme"}}'

    assert 'featurelm_input_bytes_count{feature="sentiment",tenant="acme"} 2.0' in text
    # One item under 256 bytes, one over 1 KiB: sizes are per item, not the whole body.
    assert f"{bucket('256.0')} 1.0" in text
    assert f"{bucket('1024.0')} 1.0" in text
    assert f"{bucket('4096.0')} 2.0" in text
