"""The bench harness works: the mock answers and counts, the load generator counts every
answer, and a quick `python -m bench` fills every row. Nothing here asserts performance."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.client import Connection, Latencies, closed_loop, interleaved
from bench.mock import INVALID_CONTENT, VALID_CONTENT, MockState, serve
from bench.procs import free_port
from bench.project import chat_request
from bench.rows import chat_call

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def mock() -> AsyncIterator[tuple[str, MockState]]:
    state = MockState()
    ready, stop = asyncio.Event(), asyncio.Event()
    port = free_port()
    task = asyncio.create_task(serve("127.0.0.1", port, state, ready, stop))
    await asyncio.wait_for(ready.wait(), 5)
    yield f"http://127.0.0.1:{port}", state
    stop.set()
    await task


async def test_mock_answers_chat_completions_and_counts_them(
        mock: tuple[str, MockState]) -> None:
    url, state = mock
    conn = Connection(url)
    try:
        for _ in range(3):
            status, body = await conn.post_json("/v1/chat/completions", chat_request())
            assert status == 200
            assert body["choices"][0]["message"]["content"] == VALID_CONTENT
            assert body["usage"]["prompt_tokens"] > 0
        status, stats = await conn.post_json("/_control", {})
    finally:
        await conn.close()
    assert status == 200
    assert stats["completions"] == state.completions == 3


async def test_mock_violates_the_schema_at_exactly_the_configured_rate(
        mock: tuple[str, MockState]) -> None:
    url, _ = mock
    conn = Connection(url)
    try:
        await conn.post_json("/_control", {"violation_rate": 0.2, "reset": True})
        replies = [(await conn.post_json("/v1/chat/completions", chat_request()))[1]
                   ["choices"][0]["message"]["content"] for _ in range(20)]
    finally:
        await conn.close()
    assert replies.count(INVALID_CONTENT) == 4
    # Spread evenly: every fifth reply, never two in a row.
    assert [i for i, r in enumerate(replies) if r == INVALID_CONTENT] == [4, 9, 14, 19]


async def test_mock_waits_the_configured_latency(mock: tuple[str, MockState]) -> None:
    url, _ = mock
    conn = Connection(url)
    try:
        await conn.post_json("/_control", {"latency_s": 0.05})
        started = time.perf_counter()
        status, _ = await conn.post_json("/v1/chat/completions", chat_request())
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    assert status == 200
    assert elapsed >= 0.05


async def test_mock_streams_the_reply_in_chunks_spread_over_the_latency(
        mock: tuple[str, MockState]) -> None:
    url, state = mock
    state.latency_s, state.stream_chunks = 0.2, 4
    body = json.dumps({**chat_request(), "stream": True}).encode()
    conn = Connection(url)
    try:
        reply = await conn.stream("/v1/chat/completions", body, b'"content"')
        again = await conn.stream("/v1/chat/completions", body, b'"content"')  # keep-alive
    finally:
        await conn.close()
    assert reply.status == again.status == 200 and reply.chunks == 4
    # The first text arrives after a quarter of the latency, the end after all of it.
    assert 0.04 < reply.first_text_s < 0.15 and reply.total_s >= 0.2
    events = [json.loads(line[6:]) for line in reply.body.decode().splitlines()
              if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"]["content"] for e in events if e["choices"])
    assert text == VALID_CONTENT and events[-1]["usage"]["completion_tokens"] > 0
    assert reply.body.endswith(b"data: [DONE]\n\n") and state.completions == 2


def test_cpu_and_memory_of_a_process_are_read_from_proc() -> None:
    from bench.scale import cpu_seconds, raise_open_files, rss_kib

    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert cpu_seconds(os.getpid()) > before
    assert rss_kib(os.getpid()) > 1024
    assert (cpu_seconds(2**22 + 12345), rss_kib(2**22 + 12345)) == (0.0, 0)
    assert raise_open_files() >= 1024


async def test_closed_loop_counts_every_answer_of_concurrent_clients(
        mock: tuple[str, MockState]) -> None:
    url, state = mock
    state.latency_s = 0.005
    result = await closed_loop(chat_call, url, clients=8, per_client=5, warmup_per_client=1)
    assert (result.requests, result.ok) == (40, 40)
    assert state.completions == 48  # 8 warm-up calls, then 40 measured
    assert result.rate > 0


async def test_interleaved_times_each_variant_the_same_number_of_times(
        mock: tuple[str, MockState]) -> None:
    url, state = mock
    a, b = Connection(url), Connection(url)
    try:
        lat = await interleaved({"a": chat_call(a), "b": chat_call(b)}, rounds=7, warmup=2)
    finally:
        await a.close()
        await b.close()
    assert [len(lat[k].samples) for k in ("a", "b")] == [7, 7]
    assert state.completions == 18


def test_percentiles_use_the_nearest_rank() -> None:
    lat = Latencies([float(i) for i in range(1, 101)])
    assert (lat.p50, lat.p99, lat.pct(100)) == (50.5, 99.0, 100.0)


@pytest.mark.slow
def test_quick_bench_fills_every_row(tmp_path: Path) -> None:
    """`python -m bench --quick` without LiteLLM: every row is measured or says why not."""
    out = tmp_path / "bench.json"
    # `-m bench` runs from the checkout: the working directory must be on sys.path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--no-litellm",
                          "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                         timeout=480, check=False, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {row["key"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"1a", "1b", "2a", "2b", "2c", "3", "4", "5a", "5b", "6a", "6b",
                         "7a", "7b", "8a", "8b", "9a", "9b", "9c", "9d", "9e", "10a", "10b",
                         "11"}
    for key in ("1a", "1b", "2b", "5a"):
        assert rows[key]["verdict"] == "not available"
        assert "LiteLLM" in rows[key]["detail"]
    for key in ("2a", "2c", "5b", "6a", "6b", "7a", "7b", "8a", "8b", "9a", "9b", "9c", "9d",
                "9e", "10a", "10b", "11"):
        assert rows[key]["value"] is not None, rows[key]
    # Every call under load answered, and without violations one upstream call per answer.
    assert rows["2c"]["value"] == 1.0
    assert rows["6b"]["value"] == 1.0
    # The schema corpus, after and before: no schema crashes the grammar featurelm uses.
    assert ", 0 crashed;" in rows["7a"]["detail"] and "before (llama.cpp" in rows["7a"]["detail"]
    # At production concurrency: CPU and memory per call are printed, every stream completes.
    assert "ms CPU per call" in rows["9b"]["detail"]
    assert "KiB per call in flight" in rows["9b"]["detail"]
    assert rows["10a"]["value"] == 1.0 and "KiB per stream" in rows["10a"]["detail"]
    assert "| 6b |" in run.stdout and "| 7b |" in run.stdout and "| 10b |" in run.stdout
