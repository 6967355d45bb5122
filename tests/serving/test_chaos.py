"""Chaos: sustained traffic against a real `featurelm serve` while its Redis is stopped and
restarted and its PostgreSQL store is paused and resumed. No call may answer 500, and every
call must be answered within its deadline."""

from __future__ import annotations

import secrets
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import start_server, write_project
from tests.serving.faults import OwnRedis, PausableProxy
from tests.serving.test_failure_isolation import NOTE, OK

pytestmark = [pytest.mark.postgres]

DEADLINE_S = 5.0
#: What a response may add to the deadline: the HTTP round trip on a loaded test machine.
SLACK_S = 1.5
#: (seconds from the start, action) pairs.
TIMELINE = [(3, "redis down"), (7, "redis up"), (10, "store paused"), (14, "store resumed"),
            (17, "both down"), (21, "both up")]
DURATION_S = 24


def test_no_500_and_every_call_within_its_deadline_through_redis_and_store_outages(
        tmp_path: Path) -> None:
    redis = OwnRedis(tmp_path)
    redis.start()
    proxy = PausableProxy(5432)
    schema = f"chaos_{secrets.token_hex(4)}"
    config = write_project(
        tmp_path / "chaos", features=[NOTE], backends={"primary": OK},
        routes={"default": {"backends": ["primary"]}}, auth="required", cache=redis.url,
        store=f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={schema}",
        store_timeout_s=1, override_refresh_s=0.5,
        cache_settings={"redis_timeout_s": 0.2, "redis_backoff_s": 1},
        limits={"request_timeout_s": DEADLINE_S},
        http={"rate_limit_per_minute": 1_000_000, "token_quota": 1_000_000_000, "drain_s": 0.1})
    server = start_server(config, ["acme", "globex"])
    results: list[tuple[float, int, float, str]] = []  # (start offset, status, seconds, phase)
    phase = "steady"
    stop = threading.Event()
    started = time.monotonic()

    def traffic(worker: int) -> None:
        who = ("acme", "globex")[worker % 2]
        with httpx.Client(timeout=30) as client:
            n = 0
            while not stop.is_set():
                n += 1
                headers = server.keys.bearer(who)
                if n % 3 == 0:
                    headers["Idempotency-Key"] = f"w{worker}-{n}"
                # Distinct inputs most of the time: the cache must not answer everything.
                body = {"input": {"body": f"note {worker} {n % 7 if n % 2 else n}"}}
                t0 = time.monotonic()
                try:
                    status = client.post(server.url + "/v1/features/note", json=body,
                                         headers=headers).status_code
                except httpx.HTTPError:
                    status = 0
                results.append((t0 - started, status, time.monotonic() - t0, phase))

    try:
        # Warm up: both tenants' keys and overrides are known before anything fails.
        for who in ("acme", "globex"):
            assert httpx.post(server.url + "/v1/features/note", json={"input": {"body": "hi"}},
                              headers=server.keys.bearer(who), timeout=10).status_code == 200
        workers = [threading.Thread(target=traffic, args=(i,)) for i in range(6)]
        for w in workers:
            w.start()
        for at, action in TIMELINE:
            time.sleep(max(0.0, at - (time.monotonic() - started)))
            phase = action
            if action in ("redis down", "both down"):
                redis.stop()
            if action in ("store paused", "both down"):
                proxy.pause()
            if action in ("redis up", "both up"):
                redis.start()
            if action in ("store resumed", "both up"):
                proxy.resume()
        time.sleep(max(0.0, DURATION_S - (time.monotonic() - started)))
        stop.set()
        for w in workers:
            w.join(60)
        ready = httpx.get(server.url + "/readyz", timeout=10)
    finally:
        stop.set()
        server.stop()
        proxy.close()
        redis.stop()

    statuses = Counter(status for _, status, _, _ in results)
    latencies = sorted(seconds for _, _, seconds, _ in results)
    by_phase: dict[str, list[float]] = {}
    for _, _, seconds, name in results:
        by_phase.setdefault(name, []).append(seconds)
    print(f"\nchaos: {len(results)} calls, statuses {dict(statuses)}, "
          f"p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms")
    for name, values in by_phase.items():
        print(f"  {name:>14}: {len(values):5d} calls, max {max(values) * 1000:.0f} ms")
    assert len(results) > 100
    assert statuses[500] == 0 and statuses[0] == 0, statuses
    assert set(statuses) == {200}, statuses
    assert latencies[-1] < DEADLINE_S + SLACK_S, latencies[-5:]
    assert ready.status_code == 200, ready.text
