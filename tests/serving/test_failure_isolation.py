"""Failure isolation against a real `featurelm serve`: no dependency outage, tenant template or
stray byte turns into a 500, a hang past the deadline, or internals in a response.

Each test is one reproduction of issue 16: Redis down or hung, the tenant store hung, template
memory bombs, lone surrogates, template errors, a hung backend starving its fallback,
schema-invalid output that never moved on, and model text or upstream internals in 502 bodies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from featurelm.engine.testing.fault_server import Fault, FaultPlan, FaultServer
from tests.conftest import SENTIMENT, free_port, fresh_rate_window, scripted
from tests.serving.conftest import LiveServer, start_server, write_project
from tests.serving.faults import PausableProxy, Silent

NOTE: dict[str, Any] = {
    "name": "note",
    "description": "Classify a note.",
    "input": {"type": "object", "additionalProperties": False, "required": ["body"],
              "properties": {"body": {"type": "string", "maxLength": 5000}}},
    "output": SENTIMENT["output"],
    "prompt": {"system": "Classify the note.", "user": "Note: {{ body }}"},
    "examples": [{"input": {"body": "Fine."}, "output": {"sentiment": "neutral"}}],
    "model": {"max_output_tokens": 64},
    "overridable": ["prompt"],
}
OK = scripted('{"sentiment": "positive"}')


def _rss_mb(server: LiveServer) -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _call(server: LiveServer, who: str = "acme", body: Any = None, *,
          headers: dict[str, str] | None = None, timeout: float = 30,
          path: str = "/v1/features/note") -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(server.url + path, timeout=timeout,
                          json={"input": {"body": "fine"}} if body is None else body,
                          headers={**server.keys.bearer(who), **(headers or {})})
    return response, time.monotonic() - started


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[LiveServer] = []

    def make(name: str, *, features: list[dict[str, Any]] | None = None,
             backends: dict[str, Any] | None = None, routes: dict[str, Any] | None = None,
             **extra: Any) -> LiveServer:
        config = write_project(tmp_path / name, features=features or [NOTE],
                               backends=backends or {"primary": OK},
                               routes=routes or {"default": {"backends": ["primary"]}},
                               **{"auth": "required", **extra})
        server = start_server(config, ["acme", "globex"])
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# -- 1. Redis down or hung ---------------------------------------------------------------------

@pytest.mark.parametrize("redis", ["closed", "hung"])
def test_calls_succeed_and_readyz_stays_ready_when_redis_is_down_or_hung(
        server_factory: Any, redis: str) -> None:
    silent = Silent() if redis == "hung" else None
    port = silent.port if silent else free_port()
    try:
        server = server_factory(
            f"redis-{redis}", cache=f"redis://127.0.0.1:{port}/0",
            cache_settings={"redis_timeout_s": 0.2, "redis_backoff_s": 5},
            limits={"request_timeout_s": 5},
            http={"rate_limit_per_minute": 1000, "token_quota": 1_000_000, "drain_s": 0.1})
        answers = []
        for i in range(8):
            response, took = _call(server, headers={"Idempotency-Key": f"k-{i}"})
            answers.append((response.status_code, took))
        assert [status for status, _ in answers] == [200] * 8
        # One bounded wait when Redis first fails (several ops, a few timeouts), then none.
        assert max(took for _, took in answers) < 5
        assert sum(took for _, took in answers[1:]) < 2
        # The same Idempotency-Key replays inside this replica while Redis is away.
        replay, _ = _call(server, headers={"Idempotency-Key": "k-0"})
        assert replay.status_code == 200 and replay.headers.get("Idempotent-Replayed") == "true"
        ready = httpx.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["cache"].startswith("degraded")
        metrics = httpx.get(server.url + "/metrics", headers=server.keys.bearer("admin")).text
        failures = [line for line in metrics.splitlines()
                    if line.startswith("featurelm_shared_state_failures_total")]
        assert failures and float(failures[0].split()[-1]) >= 1
        assert "Traceback" not in server.logs()
    finally:
        if silent:
            silent.close()


def test_rate_limit_holds_per_replica_while_redis_is_down(server_factory: Any) -> None:
    server = server_factory("redis-limit", cache=f"redis://127.0.0.1:{free_port()}/0",
                            cache_settings={"redis_timeout_s": 0.2},
                            http={"rate_limit_per_minute": 3, "drain_s": 0.1})
    fresh_rate_window(20)
    statuses = [_call(server)[0].status_code for _ in range(5)]
    assert statuses[:3] == [200] * 3 and statuses[3:] == [429, 429]


# -- 2. A hung tenant store --------------------------------------------------------------------

PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.mark.postgres
def test_a_hung_store_does_not_hold_calls_past_their_deadline(server_factory: Any) -> None:
    import secrets

    proxy = PausableProxy(5432)
    schema = f"iso_{secrets.token_hex(4)}"
    try:
        server = server_factory(
            "store-hung", store=f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
                                f"?schema={schema}",
            store_timeout_s=1, limits={"request_timeout_s": 10}, override_refresh_s=0.2,
            http={"drain_s": 0.1})
        assert _call(server)[0].status_code == 200  # the key and the override are now known
        proxy.pause()
        # A key the store confirmed keeps working; an override resolved before still applies.
        for _ in range(3):
            response, took = _call(server)
            assert response.status_code == 200 and took < 2, (response.text, took)
            time.sleep(0.3)
        # A key it never confirmed needs the store: 503 inside the deadline, not a hang.
        response, took = _call(server, "globex")
        assert response.status_code == 503 and took < 10, (response.status_code, took)
        assert response.headers["content-type"].startswith("application/problem+json")
        proxy.resume()
        response, _ = _call(server, "globex")
        assert response.status_code == 200
    finally:
        proxy.close()


# -- 3 to 5. Tenant templates and stray bytes --------------------------------------------------

BOMBS = [
    "{% set t = body.ljust(1500000000) %}{{ t|length }}",
    "{{ body.ljust(300000000)|length }}",
    "{{ body.center(400000000)|length }}",
    "{{ body.zfill(400000000)|length }}",
    "{{ body.ljust(90000).replace('', body.ljust(90000))|length }}",
    "{{ ([body.ljust(90000)] * 100000)|join|length }}",
    "{{ (body.ljust(90000) ~ '').join([body] * 5000)|length }}",
    "{% set a = body.ljust(90000) %}{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}"
    "{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}"
    "{% set a = a ~ a %}{{ a|length }}",
    "{% set a = body.ljust(90000) %}{% set a = a + a %}{% set a = a + a %}{% set a = a + a %}"
    "{% set a = a + a %}{% set a = a + a %}{% set a = a + a %}{% set a = a + a %}"
    "{% set a = a + a %}{{ a|length }}",
    "{{ body.ljust(20000).replace(' ', '\\n')|indent(body.ljust(90000))|length }}",
    "{{ ('\\t' ~ body).expandtabs(900000000)|length }}",
    "{{ body.translate({102: body.ljust(90000)})|length }}",
]


def _put_override(server: LiveServer, text: str, *, dry_run: bool,
                  content_type: str = "application/yaml") -> httpx.Response:
    return httpx.put(server.url + "/v1/tenants/acme/overrides/note",
                     params={"dry_run": "true"} if dry_run else None, content=text.encode(),
                     headers={**server.keys.bearer("acme"), "Content-Type": content_type},
                     timeout=30)


def test_template_memory_bombs_are_refused_before_they_allocate(server_factory: Any) -> None:
    server = server_factory("bombs")
    before = _rss_mb(server)
    for bomb in BOMBS:
        for dry_run in (True, False):
            text = "prompt:\n  user: " + json.dumps(bomb + "\t{{ body }}") + "\n"
            response = _put_override(server, text, dry_run=dry_run)
            assert response.status_code == 422, (bomb, response.text)
            # The YAML path of what failed: the template, or the example it failed on.
            path = response.json()["errors"][0]["path"]
            assert path.startswith(("prompt", "examples.")), response.text
    assert _rss_mb(server) - before < 100
    versions = httpx.get(server.url + "/v1/tenants/acme/overrides/note",
                         headers=server.keys.bearer("acme")).json()["versions"]
    assert versions == []
    assert _call(server)[0].status_code == 200


def test_lone_surrogates_are_422_naming_the_path(server_factory: Any) -> None:
    server = server_factory("surrogates")
    raw = b'{"input": {"body": "ok \\ud800"}}'
    headers = {**server.keys.bearer("acme"), "Content-Type": "application/json"}
    plain = httpx.post(server.url + "/v1/features/note", content=raw, headers=headers)
    assert plain.status_code == 422, plain.text
    assert "$.body" in plain.text
    streamed = httpx.post(server.url + "/v1/features/note", content=raw,
                          headers={**headers, "Accept": "text/event-stream"})
    assert streamed.status_code == 422, streamed.text
    batch = httpx.post(server.url + "/v1/features/note/batch", headers=headers,
                       content=b'{"inputs": [{"body": "fine"}, {"body": "\\udfff"}]}')
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert "output" in results[0] and results[1]["error"]["status"] == 422
    # As an override: refused before anything is saved, so the feature keeps working.
    for text, content_type in (('prompt:\n  system: "\\ud800"\n', "application/yaml"),
                               ('{"prompt": {"system": "\\ud800"}}', "application/json")):
        response = _put_override(server, text, dry_run=False, content_type=content_type)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["path"] == "prompt.system"
    assert httpx.get(server.url + "/v1/tenants/acme/overrides/note",
                     headers=server.keys.bearer("acme")).json()["versions"] == []
    assert _call(server)[0].status_code == 200
    assert "Traceback" not in server.logs()


def test_a_template_error_is_a_422_with_the_yaml_path(server_factory: Any) -> None:
    server = server_factory("template-error")
    for dry_run in (True, False):
        response = _put_override(server, "prompt:\n  user: \"{{ body.encode('rot13') }}\"\n",
                                 dry_run=dry_run)
        assert response.status_code == 422, response.text
        error = response.json()["errors"][0]
        assert error["path"].startswith(("prompt", "examples.")), error
        assert "LookupError" in error["problem"]
    assert "Traceback" not in server.logs()


# -- 6 and 7. Timeouts and fallback that cooperate ---------------------------------------------

def _openai(server: FaultServer, **options: Any) -> dict[str, Any]:
    return {"kind": "openai", "model": "m", "structured": "json_schema",
            "options": {"base_urls": [server.url], "streaming": False, **options}}


def test_a_hung_backend_does_not_starve_its_fallback(server_factory: Any) -> None:
    plan = FaultPlan(rates=[(0.3, Fault.hang())], seed=7)
    with FaultServer(plan) as a, FaultServer() as b:
        server = server_factory(
            "hung-a", backends={"a": _openai(a), "b": _openai(b)},
            routes={"default": {"backends": ["a", "b"]}}, limits={"request_timeout_s": 4},
            http={"rate_limit_per_minute": 100_000, "drain_s": 0.1})
        results = []
        for i in range(20):
            response, took = _call(server, body={"input": {"body": f"note {i}"}})
            results.append((response.status_code, took))
        assert [s for s, _ in results] == [200] * 20, results
        assert max(t for _, t in results) < 4.5
        assert b.completions > 0


def test_schema_invalid_output_moves_to_the_next_backend(server_factory: Any) -> None:
    plan = FaultPlan(rates=[(1.0, Fault.schema_violation())])
    with FaultServer(plan) as a, FaultServer() as b:
        server = server_factory(
            "invalid-a", backends={"a": _openai(a), "b": _openai(b)},
            routes={"default": {"backends": ["a", "b"]}},
            features=[{**NOTE, "model": {**NOTE["model"], "max_attempts": 3}}],
            http={"rate_limit_per_minute": 100_000, "drain_s": 0.1})
        for i in range(5):
            response, _ = _call(server, body={"input": {"body": f"note {i}"}})
            assert response.status_code == 200, response.text
            assert response.json()["meta"]["backend"] == "b"
        # Two replies from A per call (one re-ask), then B: A is not asked a third time.
        assert a.completions == 10 and b.completions == 5


# -- 8. Nothing internal reaches a caller ------------------------------------------------------

SECRET = "sk-live-THISMUSTNOTLEAK0123456789"


def test_502_bodies_name_paths_and_rules_not_model_values(server_factory: Any) -> None:
    echo = scripted(json.dumps({"sentiment": SECRET}))
    refused = {"kind": "openai", "model": "m",
               "options": {"base_urls": [f"http://127.0.0.1:{free_port()}/v1"]}}
    plan = FaultPlan(rates=[(1.0, Fault.error(400, body=f"bad request near {SECRET} "
                                                        "internal-host db-7:5432"))])
    with FaultServer(plan) as provider:
        server = server_factory(
            "leaks", backends={"echo": echo, "refused": refused, "provider": _openai(provider)},
            routes={"default": {"backends": ["echo"]}, "down": {"backends": ["refused"],
                                                              "retries": 0},
                    "provider": {"backends": ["provider"], "retries": 0}},
            features=[{**NOTE, "model": {**NOTE["model"], "max_attempts": 2,
                                         "allowed_routes": ["default", "down", "provider"]}}],
            limits={"request_timeout_s": 5}, http={"drain_s": 0.1})
        bodies = []
        for route in ("default", "down", "provider"):
            body = {"input": {"body": "x"}, "options": {"route": route}}
            response, _ = _call(server, body=body)
            assert response.status_code in (502, 504), response.text
            bodies.append(response.text)
            streamed = httpx.post(server.url + "/v1/features/note", json=body, timeout=30,
                                  headers={**server.keys.bearer("acme"),
                                           "Accept": "text/event-stream"})
            bodies.append(streamed.text)
            batch, _ = _call(server, body={"inputs": [{"body": "x"}],
                                           "options": {"route": route}},
                             path="/v1/features/note/batch")
            bodies.append(batch.text)
        shown = "\n".join(bodies)
        assert SECRET not in shown and "THISMUSTNOTLEAK" not in shown
        assert "127.0.0.1" not in shown and "db-7" not in shown
        assert "$.sentiment: fails 'enum'" in bodies[0]
        logs = server.logs()
        assert "db-7:5432" in logs and SECRET not in logs  # in the log, scrubbed
