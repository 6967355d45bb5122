"""The HTTP app in process: typed OpenAPI, auth, tenant scoping, limits, idempotency, metrics."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from featurelm.engine import Engine
from featurelm.engine.backends.scripted import ScriptedBackend
from featurelm.serving.app import create_app
from tests.conftest import SENTIMENT, ProjectFactory, fresh_rate_window, last_line_of_python
from tests.serving.conftest import Client, ClientFactory

CALL = {"input": {"text": "great"}}
OVERRIDE = "prompt:\n  system: You read reviews for ACME.\n"


@pytest.fixture
async def client(make_client: ClientFactory) -> Client:
    return await make_client(features=[{**SENTIMENT, "overridable": ["prompt.system"]}])


def as_acme(client: Client) -> dict[str, str]:
    return client.keys.bearer("acme")


async def test_feature_call_returns_output_and_meta(client: Client) -> None:
    response = await client.http.post("/v1/features/sentiment", json=CALL,
                                      headers=as_acme(client))
    assert response.status_code == 200
    assert response.json()["output"] == {"sentiment": "positive"}
    assert response.json()["meta"]["backend"] == "primary"
    assert response.json()["meta"]["tenant"] == "acme"


async def test_openapi_is_valid_31_with_each_features_own_schemas(client: Client) -> None:
    spec = (await client.http.get("/openapi.json")).json()
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    operation = spec["paths"]["/v1/features/sentiment"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    response = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert request == {"$ref": "#/components/schemas/SentimentRequest"}
    assert response == {"$ref": "#/components/schemas/SentimentResponse"}
    schemas = spec["components"]["schemas"]
    assert schemas["SentimentInput"] == SENTIMENT["input"]
    assert schemas["SentimentOutput"] == SENTIMENT["output"]
    assert schemas["SentimentResponse"]["properties"]["output"] == {
        "$ref": "#/components/schemas/SentimentOutput"}
    assert set(operation["responses"]) >= {"200", "401", "413", "422", "429", "502", "504"}


async def test_contract_refs_are_rebased_into_components(make_client: ClientFactory) -> None:
    with_defs = {**SENTIMENT, "name": "tagged", "input": {
        "type": "object", "required": ["text"], "additionalProperties": False,
        "$defs": {"text": {"type": "string", "maxLength": 50}},
        "properties": {"text": {"$ref": "#/$defs/text"}}},
        "examples": []}
    client = await make_client(features=[with_defs])
    spec = (await client.http.get("/openapi.json")).json()
    validate(spec)
    assert spec["components"]["schemas"]["TaggedInput"]["properties"]["text"] == {
        "$ref": "#/components/schemas/TaggedInput/$defs/text"}


# -- auth -------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer flm_nope"},
                                     {"Authorization": "Basic dXNlcjpwdw=="}])
async def test_missing_or_unknown_key_is_401_with_challenge(client: Client,
                                                            headers: dict[str, str]) -> None:
    response = await client.http.post("/v1/features/sentiment", json=CALL, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/problem+json"


async def test_feature_call_paths_route_like_any_other_endpoint(client: Client) -> None:
    acme = as_acme(client)
    # Unknown features: the key is checked first, then 404, both as problems.
    assert (await client.http.post("/v1/features/nope", json=CALL)).status_code == 401
    for path in ("/v1/features/nope", "/v1/features/nope/batch"):
        response = await client.http.post(path, json=CALL, headers=acme)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
    # The contract is a GET; batch is POST only; deeper paths do not exist.
    assert (await client.http.get("/v1/features/sentiment", headers=acme)).status_code == 200
    not_allowed = await client.http.get("/v1/features/sentiment/batch", headers=acme)
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"
    assert (await client.http.post("/v1/features/sentiment/batch/x", json=CALL,
                                   headers=acme)).status_code == 404
    batch = await client.http.post("/v1/features/sentiment/batch",
                                   json={"inputs": [{"text": "a"}]}, headers=acme)
    assert batch.json()["results"][0]["output"] == {"sentiment": "positive"}
    # Metrics label a call by its route template, an unknown feature by the placeholder.
    text = (await client.http.get("/metrics", headers=client.keys.bearer("admin"))).text
    for route, status in (("/v1/features/{name}", 404), ("/v1/features/{name}/batch", 404),
                          ("/v1/features/sentiment/batch", 200)):
        assert (f'featurelm_http_request_duration_seconds_count{{method="POST",'
                f'route="{route}",status="{status}"}} 1.0') in text


async def test_tenant_comes_from_the_key_never_from_the_request(client: Client) -> None:
    response = await client.http.post(
        "/v1/features/sentiment", json={**CALL, "tenant": "globex"},
        headers={**as_acme(client), "X-Tenant": "globex"})
    assert response.status_code == 422  # unknown body fields are refused, not obeyed
    response = await client.http.post("/v1/features/sentiment", json=CALL,
                                      headers={**as_acme(client), "X-Tenant": "globex"})
    assert response.json()["meta"]["tenant"] == "acme"


async def test_auth_off_serves_anonymous_calls_and_says_so_at_startup(
        make_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    client = await make_client(extra={"auth": "off"})
    response = await client.http.post("/v1/features/sentiment", json=CALL)
    assert response.status_code == 200 and response.json()["meta"]["tenant"] is None
    # A key that is sent is still checked, and the admin API is never anonymous.
    bad = await client.http.post("/v1/features/sentiment", json=CALL,
                                 headers={"Authorization": "Bearer flm_nope"})
    assert bad.status_code == 401
    assert (await client.http.get("/v1/tenants/acme/overrides")).status_code == 401
    app = create_app(client.engine)
    with caplog.at_level(logging.WARNING, logger="featurelm.serving"):
        async with app.router.lifespan_context(app):
            pass
    assert any("auth is off" in r.getMessage() for r in caplog.records)


# -- admin API ------------------------------------------------------------------------------

async def test_tenant_manages_its_own_overrides_end_to_end(client: Client) -> None:
    base = "/v1/tenants/acme/overrides/sentiment"
    dry = await client.http.put(base, params={"dry_run": "true"}, content=OVERRIDE,
                                headers=as_acme(client))
    assert dry.status_code == 200 and dry.json()["version"] is None
    assert "ACME" in dry.json()["rendered"][0][0]["content"]
    assert (await client.http.get(base, headers=as_acme(client))).json()["versions"] == []

    first = await client.http.put(base, content=OVERRIDE, headers=as_acme(client))
    second = await client.http.put(base, content=OVERRIDE.replace("ACME", "Acme Corp"),
                                   headers=as_acme(client))
    assert (first.status_code, second.status_code) == (201, 201)
    assert (first.json()["version"], second.json()["version"]) == (1, 2)
    versions = (await client.http.get(base, headers=as_acme(client))).json()["versions"]
    assert [(v["version"], v["active"], v["author"]) for v in versions] == [
        (1, False, "tenant:acme"), (2, True, "tenant:acme")]

    diff = await client.http.get(base + "/diff", params={"from": 1, "to": 2},
                                 headers=as_acme(client))
    assert "-  system: You read reviews for ACME." in diff.json()["diff"]
    rolled = await client.http.post(base + "/versions/1/rollback", headers=as_acme(client))
    assert rolled.status_code == 200 and rolled.json()["active"] is True
    text = await client.http.get(base + "/versions/1", headers=as_acme(client))
    assert text.json()["yaml_text"] == OVERRIDE
    call = await client.http.post("/v1/features/sentiment", json=CALL, headers=as_acme(client))
    assert call.json()["meta"]["override_version"] == 1
    activated = await client.http.post(base + "/versions/2/activate", headers=as_acme(client))
    assert activated.json()["version"] == 2 and activated.json()["active"] is True
    deleted = await client.http.delete(base, headers=as_acme(client))
    assert deleted.status_code == 204
    call = await client.http.post("/v1/features/sentiment", json=CALL, headers=as_acme(client))
    assert call.json()["meta"]["override_version"] is None


async def test_a_tenant_key_never_reaches_another_tenant(client: Client) -> None:
    saved = await client.http.put("/v1/tenants/globex/overrides/sentiment", content=OVERRIDE,
                                  headers=client.keys.bearer("admin"))
    assert saved.status_code == 201
    for method, path in [("GET", "/v1/tenants/globex/overrides"),
                         ("GET", "/v1/tenants/globex/overrides/sentiment"),
                         ("GET", "/v1/tenants/globex/overrides/sentiment/versions/1"),
                         ("PUT", "/v1/tenants/globex/overrides/sentiment"),
                         ("POST", "/v1/tenants/globex/overrides/sentiment/versions/1/activate"),
                         ("DELETE", "/v1/tenants/globex/overrides/sentiment")]:
        response = await client.http.request(method, path, content=OVERRIDE,
                                             headers=as_acme(client))
        assert response.status_code == 404, (method, path)
        assert "ACME" not in response.text and "version" not in response.json()


async def test_tenant_keys_get_403_on_operator_endpoints(client: Client) -> None:
    assert (await client.http.get("/v1/tenants", headers=as_acme(client))).status_code == 403
    created = await client.http.post("/v1/tenants", json={"name": "initech"},
                                     headers=client.keys.bearer("admin"))
    assert created.status_code == 201 and created.json()["api_key"].startswith("flm_")
    again = await client.http.post("/v1/tenants", json={"name": "initech"},
                                   headers=client.keys.bearer("admin"))
    assert again.status_code == 409
    listed = await client.http.get("/v1/tenants", headers=client.keys.bearer("admin"))
    assert "initech" in [t["name"] for t in listed.json()["tenants"]]


async def test_invalid_override_is_422_with_the_problem(client: Client) -> None:
    response = await client.http.put("/v1/tenants/acme/overrides/sentiment",
                                     content="output: {}\n", headers=as_acme(client))
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "output"


# -- errors and limits ----------------------------------------------------------------------

@pytest.mark.parametrize(("body", "kind"), [
    ({"input": {"text": 5}}, "input"),
    ({"inputs": {}}, "input"),
    ({"input": {"text": "x"}, "options": {"route": "nope"}}, "input"),
])
async def test_bad_requests_get_problem_json(client: Client, body: object, kind: str) -> None:
    response = await client.http.post("/v1/features/sentiment", json=body,
                                      headers=as_acme(client))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith(kind)


async def test_schema_errors_carry_json_paths(client: Client) -> None:
    response = await client.http.post("/v1/features/sentiment", json={"input": {"text": 5}},
                                      headers=as_acme(client))
    assert response.json()["errors"] == [{"path": "$.text", "message": "5 is not of type 'string'"}]


async def test_unexpected_errors_show_no_trace(make_client: ClientFactory) -> None:
    client = await make_client()
    backend = client.engine.backends["primary"]
    assert isinstance(backend, ScriptedBackend)
    backend._queue = [RuntimeError("secret-token-123 leaked")]
    response = await client.http.post("/v1/features/sentiment", json=CALL,
                                      headers=as_acme(client))
    assert response.status_code in (500, 502)
    assert "secret-token-123" not in response.text and "Traceback" not in response.text


async def test_rate_limit_is_per_tenant_with_retry_after(make_client: ClientFactory) -> None:
    client = await make_client(extra={"http": {"rate_limit_per_minute": 2}})
    fresh_rate_window()
    statuses = [(await client.http.post("/v1/features/sentiment", json=CALL,
                                        headers=as_acme(client))).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = await client.http.post("/v1/features/sentiment", json=CALL,
                                     headers=as_acme(client))
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    other = await client.http.post("/v1/features/sentiment", json=CALL,
                                   headers=client.keys.bearer("globex"))
    assert other.status_code == 200


async def test_token_quota_stops_a_tenant_once_spent(make_client: ClientFactory) -> None:
    client = await make_client(extra={"http": {"token_quota": 10}})
    first = await client.http.post("/v1/features/sentiment", json=CALL, headers=as_acme(client))
    second = await client.http.post("/v1/features/sentiment", json=CALL,
                                    headers=as_acme(client))
    assert (first.status_code, second.status_code) == (200, 429)
    assert second.json()["type"].endswith("quota-exceeded") and "retry-after" in second.headers


async def test_batch_bounds_concurrency_and_reports_each_item(
        make_client: ClientFactory) -> None:
    client = await make_client(extra={"http": {"batch_concurrency": 2}})
    running = peak = 0

    async def reply(request: Any) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return '{"sentiment": "neutral"}'

    backend = client.engine.backends["primary"]
    assert isinstance(backend, ScriptedBackend)
    backend._function = reply
    inputs = [{"text": str(i)} for i in range(6)] + [{"text": 7}]
    response = await client.http.post("/v1/features/sentiment/batch", json={"inputs": inputs},
                                      headers=as_acme(client))
    results = response.json()["results"]
    assert response.status_code == 200 and len(results) == 7
    assert all(r["output"] == {"sentiment": "neutral"} for r in results[:6])
    assert results[6]["error"]["status"] == 422
    assert peak == 2


async def test_idempotency_key_replays_without_a_second_backend_call(client: Client) -> None:
    headers = {**as_acme(client), "Idempotency-Key": "order-1"}
    backend = client.engine.backends["primary"]
    assert isinstance(backend, ScriptedBackend)
    first, second = await asyncio.gather(
        client.http.post("/v1/features/sentiment", json=CALL, headers=headers),
        client.http.post("/v1/features/sentiment", json=CALL, headers=headers))
    third = await client.http.post("/v1/features/sentiment", json=CALL, headers=headers)
    assert first.json() == second.json() == third.json()
    assert backend.calls == 1
    # Scoped per tenant: another tenant's same key is a different request.
    other = await client.http.post("/v1/features/sentiment", json=CALL,
                                   headers={**client.keys.bearer("globex"),
                                            "Idempotency-Key": "order-1"})
    assert other.json()["meta"]["tenant"] == "globex" and backend.calls == 2
    changed = await client.http.post("/v1/features/sentiment",
                                     json={"input": {"text": "awful"}}, headers=headers)
    assert changed.status_code == 422 and changed.json()["type"].endswith("idempotency")


async def test_metrics_count_calls_tokens_and_failures(client: Client) -> None:
    await client.http.post("/v1/features/sentiment", json=CALL, headers=as_acme(client))
    await client.http.post("/v1/features/sentiment", json={"input": {"text": 1}},
                           headers=as_acme(client))
    assert (await client.http.get("/metrics", headers=as_acme(client))).status_code == 403
    text = (await client.http.get("/metrics", headers=client.keys.bearer("admin"))).text
    assert 'featurelm_feature_duration_seconds_count{backend="primary",feature="sentiment"} 1.0' \
        in text
    assert 'featurelm_tokens_total{direction="out",feature="sentiment",tenant="acme"}' in text
    assert 'featurelm_validation_failures_total{feature="sentiment",kind="input"} 1.0' in text
    assert 'featurelm_cache_requests_total{feature="sentiment",result="miss"} 1.0' in text


async def test_request_id_is_echoed_and_logs_hold_no_prompt_text(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    from featurelm.serving.logs import JsonFormatter

    secret_text = "my very private review text"
    with caplog.at_level(logging.DEBUG):
        response = await client.http.post(
            "/v1/features/sentiment", json={"input": {"text": secret_text}},
            headers={**as_acme(client), "X-Request-ID": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    access = [line for line in lines if line["logger"] == "featurelm.access"]
    assert access and access[-1]["request_id"] == "req-42"
    assert access[-1]["tenant"] == "acme" and access[-1]["feature"] == "sentiment"
    assert all(secret_text not in json.dumps(line) for line in lines)


async def test_readiness_reports_each_dependency(client: Client) -> None:
    response = await client.http.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"shutdown": "ok", "store": "ok", "cache": "ok",
                                         "backends": "ok"}


async def test_with_auth_off_the_store_opens_only_when_a_key_is_sent(
        make_project: ProjectFactory, tmp_path: Path) -> None:
    engine = Engine.from_config(make_project(extra={"auth": "off"}))
    await engine.start()  # what the server's lifespan does
    transport = httpx.ASGITransport(app=create_app(engine), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["checks"]["store"] == "not used yet"
            assert (await http.post("/v1/features/sentiment", json=CALL)).status_code == 200
            assert not (tmp_path / "featurelm.db").exists()
            # A key that is sent is still checked, so the store opens for it.
            refused = await http.post("/v1/features/sentiment", json=CALL,
                                      headers={"Authorization": "Bearer flm_unknown"})
            assert refused.status_code == 401
            assert (tmp_path / "featurelm.db").exists()
            assert (await http.get("/readyz")).json()["checks"]["store"] == "ok"
    finally:
        await engine.aclose()


async def test_with_auth_required_the_store_opens_at_start(make_project: ProjectFactory,
                                                           tmp_path: Path) -> None:
    engine = Engine.from_config(make_project(extra={"auth": "required"}))
    await engine.start()
    try:
        assert (tmp_path / "featurelm.db").exists()
    finally:
        await engine.aclose()
    broken = Engine.from_config(make_project(extra={
        "auth": "required", "store": f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}"}))
    with pytest.raises(Exception, match="store"):
        await broken.start()


def test_the_server_loads_store_eval_and_regex_code_only_when_used() -> None:
    # Each costs resident memory in every replica: SQLAlchemy and alembic about 20 MiB.
    script = ("import sys\n"
              "import featurelm.cli, featurelm.serving.server, featurelm.evals.gate\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & "
              "{'sqlalchemy', 'alembic', 're2', 'tqdm'}))\n")
    assert last_line_of_python(script) == "[]"


def test_after_startup_the_collector_skips_startup_objects() -> None:
    from featurelm.serving.server import GC_YOUNG_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
