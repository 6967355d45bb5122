"""The service through a real `featurelm serve` process: every endpoint and error status."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.serving.conftest import LiveServer

pytestmark = pytest.mark.slow
CALL = {"input": {"text": "great"}}


@pytest.fixture(scope="module")
def http(api_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_server.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def acme(api_server: LiveServer) -> dict[str, str]:
    return api_server.keys.bearer("acme")


def is_problem(response: httpx.Response, status: int) -> bool:
    body = response.json()
    return (response.status_code == status and body["status"] == status
            and response.headers["content-type"] == "application/problem+json"
            and "Traceback" not in response.text)


def test_listing_contract_and_call(http: httpx.Client, acme: dict[str, str]) -> None:
    names = [f["name"] for f in http.get("/v1/features", headers=acme).json()["features"]]
    assert names == ["broken", "hanging", "sentiment", "tiny"]
    contract = http.get("/v1/features/sentiment", headers=acme).json()
    assert contract["output"]["required"] == ["sentiment"]
    response = http.post("/v1/features/sentiment", json=CALL, headers=acme)
    assert response.status_code == 200
    assert response.json()["output"] == {"sentiment": "positive"}
    assert response.json()["meta"]["tenant"] == "acme"
    assert len(response.headers["x-request-id"]) > 0


def test_operations_endpoints(http: httpx.Client, api_server: LiveServer) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = http.get("/metrics", headers=api_server.keys.bearer("admin"))
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "featurelm_http_request_duration_seconds_bucket" in metrics.text
    assert http.get("/openapi.json").json()["openapi"].startswith("3.1")


def test_logs_are_json_with_request_ids_and_no_input(http: httpx.Client,
                                                     acme: dict[str, str],
                                                     api_server: LiveServer) -> None:
    http.post("/v1/features/sentiment", json={"input": {"text": "zebra-canary-text"}},
              headers={**acme, "X-Request-ID": "live-7"})

    def access_line() -> dict[str, object] | None:
        for line in api_server.logs().splitlines():
            data = json.loads(line) if line.startswith("{") else {}
            if data.get("request_id") == "live-7" and data["logger"] == "featurelm.access":
                return data
        return None

    deadline = time.monotonic() + 5
    while (line := access_line()) is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the line is written just after the response is sent
    assert line is not None and line["route"] == "/v1/features/sentiment"
    assert line["tenant"] == "acme" and line["status"] == 200
    assert "zebra-canary-text" not in api_server.logs()


def test_streaming_sends_deltas_then_the_validated_result(http: httpx.Client,
                                                          acme: dict[str, str]) -> None:
    events = []
    # no-cache: an earlier test called with the same input, and a cache hit streams one delta.
    call = {**CALL, "options": {"cache": "no-cache"}}
    with http.stream("POST", "/v1/features/sentiment", json=call,
                     headers={**acme, "Accept": "text/event-stream"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                events.append([line[7:]])
            elif line.startswith("data: "):
                events[-1].append(json.loads(line[6:]))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "progress" and kinds[-1] == "result"
    deltas = "".join(data["text"] for kind, data in events if kind == "delta")
    assert kinds.count("delta") > 1 and json.loads(deltas) == {"sentiment": "positive"}
    assert events[-1][1]["output"] == {"sentiment": "positive"}


def test_streaming_failure_ends_with_an_error_event(http: httpx.Client,
                                                    acme: dict[str, str]) -> None:
    with http.stream("POST", "/v1/features/broken", json=CALL,
                     headers={**acme, "Accept": "text/event-stream"}) as response:
        body = response.read().decode()
    last = body.strip().split("\n\n")[-1]
    event, data = last.split("\n", 1)
    assert event == "event: error" and json.loads(data.removeprefix("data: "))["status"] == 502


def test_batch_returns_one_result_or_error_per_item(http: httpx.Client,
                                                    acme: dict[str, str]) -> None:
    response = http.post("/v1/features/sentiment/batch",
                         json={"inputs": [{"text": "a"}, {"text": 2}, {"text": "b"}]},
                         headers=acme)
    results = response.json()["results"]
    assert [("output" in r, "error" in r) for r in results] == [(True, False), (False, True),
                                                                (True, False)]
    assert results[1]["error"]["errors"][0]["path"] == "$.text"


def test_idempotent_retry_replays_the_first_result(http: httpx.Client,
                                                   acme: dict[str, str]) -> None:
    headers = {**acme, "Idempotency-Key": "live-retry-1"}
    first = http.post("/v1/features/sentiment", json=CALL, headers=headers)
    second = http.post("/v1/features/sentiment", json=CALL, headers=headers)
    assert second.json() == first.json()  # same latency_ms: not computed twice
    assert second.headers["idempotent-replayed"] == "true"
    other = http.post("/v1/features/sentiment", json={"input": {"text": "other"}},
                      headers=headers)
    assert is_problem(other, 422)


def test_admin_api_round_trip(http: httpx.Client, api_server: LiveServer,
                              acme: dict[str, str]) -> None:
    admin = api_server.keys.bearer("admin")
    created = http.post("/v1/tenants", json={"name": "initech"}, headers=admin)
    assert created.status_code == 201
    initech = {"Authorization": f"Bearer {created.json()['api_key']}"}
    assert is_problem(http.post("/v1/tenants", json={"name": "initech"}, headers=admin), 409)
    base = "/v1/tenants/initech/overrides/sentiment"
    body = "model:\n  temperature: 0.5\n"
    assert is_problem(http.put(base, content=body, headers=initech), 422)  # not overridable
    assert http.get(base, headers=initech).json() == {"versions": []}
    assert http.get("/v1/tenants/initech/overrides", headers=initech).status_code == 200
    assert is_problem(http.get(base, headers=acme), 404)
    assert is_problem(http.get("/v1/tenants", headers=initech), 403)
    assert is_problem(http.post(base + "/versions/1/activate", headers=initech), 404)
    assert is_problem(http.post(base + "/versions/1/rollback", headers=admin), 404)
    assert is_problem(http.get(base + "/diff", params={"from": 1, "to": 2}, headers=admin), 404)
    assert http.delete(base, headers=admin).status_code == 204


def test_auth_errors(http: httpx.Client) -> None:
    missing = http.post("/v1/features/sentiment", json=CALL)
    assert is_problem(missing, 401) and "www-authenticate" in missing.headers
    unknown = http.get("/v1/features", headers={"Authorization": "Bearer flm_unknown"})
    assert is_problem(unknown, 401)


def test_not_found_and_invalid_input(http: httpx.Client, acme: dict[str, str]) -> None:
    assert is_problem(http.post("/v1/features/nope", json=CALL, headers=acme), 404)
    assert is_problem(http.get("/v1/features/nope", headers=acme), 404)
    invalid = http.post("/v1/features/sentiment", json={"input": {"txt": "x"}}, headers=acme)
    assert is_problem(invalid, 422)
    assert [e["path"] for e in invalid.json()["errors"]] == ["$", "$"]  # missing, unexpected
    garbled = http.post("/v1/features/sentiment", content=b"{nope", headers=acme)
    assert is_problem(garbled, 422)


def test_oversized_bodies_are_413_declared_or_streamed(http: httpx.Client,
                                                       acme: dict[str, str]) -> None:
    big = json.dumps({"input": {"text": "x" * 20_000}}).encode()
    assert is_problem(http.post("/v1/features/sentiment", content=big, headers=acme), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
        for start in range(0, len(big), 1000):
            yield big[start:start + 1000]

    streamed = http.post("/v1/features/sentiment", content=chunks(), headers=acme)
    assert is_problem(streamed, 413)


def test_input_over_the_token_budget_is_413(http: httpx.Client, acme: dict[str, str]) -> None:
    response = http.post("/v1/features/tiny", json={"input": {"text": "word " * 300}},
                         headers=acme)
    assert is_problem(response, 413) and "context window" in response.json()["detail"]


def test_backend_failures_are_502_and_504(http: httpx.Client, acme: dict[str, str]) -> None:
    broken = http.post("/v1/features/broken", json=CALL, headers=acme)
    assert is_problem(broken, 502) and broken.json()["attempts"][0]["errors"]
    assert "no json here" not in broken.text  # raw model text stays server-side
    assert is_problem(http.post("/v1/features/hanging", json=CALL, headers=acme), 504)
