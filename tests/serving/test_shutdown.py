"""A real server with tight limits: 429s with Retry-After, then a graceful SIGTERM shutdown."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SENTIMENT, fresh_rate_window, scripted
from tests.serving.conftest import LiveServer, feature, start_server, write_project

pytestmark = pytest.mark.slow
CALL = {"input": {"text": "great"}}


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root: Path = tmp_path_factory.mktemp("strict")
    config = write_project(
        root, features=[SENTIMENT, feature("slow", "slow")],
        backends={"primary": scripted('{"sentiment": "positive"}'),
                  "patient": {"kind": "scripted", "options": {
                      "replies": ['{"sentiment": "neutral"}'], "delay": 1.5}}},
        routes={"default": {"backends": ["primary"]}, "slow": {"backends": ["patient"]}},
        auth="required",
        http={"rate_limit_per_minute": 2, "token_quota": 300, "drain_s": 1.0,
              "shutdown_grace_s": 10})
    server = start_server(config, ["busy", "hungry", "patient"])
    yield server
    server.stop()


def test_rate_limit_answers_429_with_retry_after(strict_server: LiveServer) -> None:
    headers = strict_server.keys.bearer("busy")
    fresh_rate_window()
    with httpx.Client(base_url=strict_server.url, timeout=10) as http:
        statuses = [http.post("/v1/features/sentiment", json=CALL, headers=headers)
                    for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].headers["content-type"] == "application/problem+json"
    assert 1 <= int(statuses[2].headers["retry-after"]) <= 60


def test_token_quota_answers_429(strict_server: LiveServer) -> None:
    headers = strict_server.keys.bearer("hungry")
    with httpx.Client(base_url=strict_server.url, timeout=10) as http:
        first = http.post("/v1/features/sentiment", json={"input": {"text": "x " * 900}},
                          headers=headers)
        second = http.post("/v1/features/sentiment", json=CALL, headers=headers)
    assert first.status_code == 200 and first.json()["meta"]["tokens_in"] > 300
    assert second.status_code == 429 and second.json()["type"].endswith("quota-exceeded")
    assert "retry-after" in second.headers


def test_sigterm_fails_readiness_then_finishes_in_flight_requests(
        strict_server: LiveServer) -> None:
    headers = {**strict_server.keys.bearer("patient"), "Accept": "text/event-stream"}
    events: list[str] = []
    started = threading.Event()

    def call() -> None:
        with httpx.Client(base_url=strict_server.url, timeout=20) as http, \
                http.stream("POST", "/v1/features/slow", json=CALL, headers=headers) as r:
            for line in r.iter_lines():
                if line.startswith("event: "):
                    events.append(line[7:])
                    started.set()

    caller = threading.Thread(target=call)
    with httpx.Client(base_url=strict_server.url, timeout=5) as probe:
        assert probe.get("/readyz").status_code == 200  # opens the probe's connection
        caller.start()
        assert started.wait(10), "the slow request never started"
        strict_server.process.send_signal(signal.SIGTERM)
        draining = probe.get("/readyz")
    assert draining.status_code == 503 and draining.json()["checks"]["shutdown"] == "draining"
    caller.join(20)
    assert events[-1] == "result"  # the in-flight request completed
    assert strict_server.process.wait(timeout=20) == 0
