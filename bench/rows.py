"""The measurements behind each row of the bench table (see docs/bench.md for what they mean)."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import Call, Connection, closed_loop, interleaved
from bench.harness import PYTHON, Harness, Server, featurelm_argv
from bench.procs import Proc
from bench.project import (
    FEATURE,
    INPUT,
    chat_request,
    feature_request,
    write_featurelm_project,
)
from bench.report import Row, ratio_row, unavailable

FEATURE_PATH = f"/v1/features/{FEATURE}"
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Sizes:
    """How much each row measures; `quick` is for the smoke test."""

    latency_rounds: int = 1000
    warmup: int = 50
    clients: int = 64
    per_client: int = 64
    cache_rounds: int = 1000
    coalesce: int = 100
    structured_calls: int = 500
    cold_starts: int = 3
    #: Row 7: every n-th Kubernetes schema of the corpus, and timed generations per kind.
    corpus_k8s_step: int = 1
    mask_calls: int = 4

    @classmethod
    def quick(cls) -> Sizes:
        return cls(latency_rounds=10, warmup=2, clients=4, per_client=3, cache_rounds=10,
                   coalesce=10, structured_calls=10, cold_starts=1, corpus_k8s_step=50,
                   mask_calls=1)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def feature_call(conn: Connection, payload: dict[str, Any] | None = None) -> Call:
    body = payload or feature_request()

    async def call() -> bool:
        status, data = await conn.post_json(FEATURE_PATH, body)
        return status == 200 and isinstance(data, dict) and "sentiment" in data["output"]
    return call


_distinct = itertools.count()


def distinct_feature_call(conn: Connection) -> Call:
    """A feature call with a text never sent before: no cache hit, no merging with another
    caller, so every call reaches the mock like a call through a plain proxy does."""

    async def call() -> bool:
        body = {"input": {"text": f"{INPUT['text']} (#{next(_distinct)})"},
                "options": {"cache": "default"}}
        status, data = await conn.post_json(FEATURE_PATH, body)
        return status == 200 and isinstance(data, dict) and "sentiment" in data["output"]
    return call


def chat_call(conn: Connection) -> Call:
    body = chat_request()

    async def call() -> bool:
        status, data = await conn.post_json(CHAT_PATH, body)
        return status == 200 and bool(data["choices"][0]["message"]["content"])
    return call


def sdk_call(base_url: str) -> tuple[Call, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-bench", max_retries=0)
    body = chat_request()

    async def call() -> bool:
        reply = await client.chat.completions.create(**body)
        return bool(reply.choices[0].message.content)
    return call, client


# -- 1. per-call overhead ----------------------------------------------------------------------

async def overhead(h: Harness, fl: Server, ll: Server | None, sizes: Sizes) -> list[Row]:
    await h.mock_control(latency_s=0.0, violation_rate=0.0)
    conns = {name: Connection(url) for name, url in
             (("direct", h.mock_url), ("featurelm", fl.url)) + ((("litellm", ll.url),) if ll
                                                                else ())}
    calls: dict[str, Call] = {"direct": chat_call(conns["direct"]),
                              "featurelm": feature_call(conns["featurelm"])}
    sdk_clients = []
    if ll is not None:
        calls["litellm"] = chat_call(conns["litellm"])
        for name, url in (("direct_sdk", h.mock_url), ("litellm_sdk", ll.url)):
            calls[name], client = sdk_call(url)
            sdk_clients.append(client)
    try:
        lat = await interleaved(calls, sizes.latency_rounds, sizes.warmup)
    finally:
        for conn in conns.values():
            await conn.close()
        for client in sdk_clients:
            await client.close()

    def over(name: str, base: str = "direct") -> tuple[float, float]:
        return lat[name].p50 - lat[base].p50, lat[name].p99 - lat[base].p99

    fl50, fl99 = over("featurelm")
    what = "featurelm overhead / LiteLLM proxy overhead"
    base = (f"direct p50 {ms(lat['direct'].p50)} p99 {ms(lat['direct'].p99)}; "
            f"featurelm +{ms(fl50)} / +{ms(fl99)}")
    if ll is None:
        reason = f"LiteLLM proxy not started ({base})"
        return [unavailable("1a", f"{what}, p50", "<= 0.5", reason),
                unavailable("1b", f"{what}, p99", "<= 0.5", reason)]
    ll50, ll99 = over("litellm")
    sdk50, sdk99 = over("litellm_sdk", "direct_sdk")
    detail = (f"{base}; LiteLLM +{ms(ll50)} / +{ms(ll99)} (same raw client); via openai SDK "
              f"LiteLLM +{ms(sdk50)} / +{ms(sdk99)} over direct SDK p50 "
              f"{ms(lat['direct_sdk'].p50)}; {sizes.latency_rounds} calls each, L = 0")
    return [
        ratio_row("1a", f"{what}, p50", "<= 0.5", fl50 / ll50, lambda r: r <= 0.5,
                  detail),
        ratio_row("1b", f"{what}, p99", "<= 0.5", fl99 / ll99, lambda r: r <= 0.5,
                  "p99 of each minus p99 of direct, same calls as 1a"),
    ]


# -- 2. throughput under concurrency ---------------------------------------------------------

async def throughput(h: Harness, fl: Server, ll: Server | None, sizes: Sizes,
                     latency_s: float = 0.05) -> list[Row]:
    await h.mock_control(latency_s=latency_s, violation_rate=0.0)
    ideal = sizes.clients / latency_s
    load = {"clients": sizes.clients, "per_client": sizes.per_client}
    try:
        direct = await closed_loop(chat_call, h.mock_url, **load)
        ours = await closed_loop(distinct_feature_call, fl.url, **load)
        theirs = await closed_loop(chat_call, ll.url, **load) if ll else None
    finally:
        await h.mock_control(latency_s=0.0)
    success = ours.ok / ours.requests
    common = (f"{sizes.clients} clients x {sizes.per_client} calls, L = "
              f"{latency_s * 1000:.0f} ms; ideal {ideal:.0f}/s")
    rows = [
        ratio_row("2a", "featurelm throughput / ideal (clients / L)", ">= 0.90",
                  ours.rate / ideal, lambda r: r >= 0.9,
                  f"featurelm {ours.rate:.0f}/s; harness alone (client -> mock) "
                  f"{direct.rate:.0f}/s = {direct.rate / ideal:.2f} of ideal; {common}"),
    ]
    if theirs is None:
        rows.append(unavailable("2b", "featurelm throughput / LiteLLM proxy throughput",
                                ">= 2.0", "LiteLLM proxy not started"))
    else:
        rows.append(ratio_row(
            "2b", "featurelm throughput / LiteLLM proxy throughput", ">= 2.0",
            ours.rate / theirs.rate, lambda r: r >= 2.0,
            f"LiteLLM {theirs.rate:.0f}/s ({theirs.ok}/{theirs.requests} ok)"))
    rows.append(ratio_row("2c", "featurelm successful calls / calls under load", "= 1.00",
                          success, lambda r: r == 1.0,
                          f"{ours.ok}/{ours.requests} answered 200 with valid output",
                          fmt="{:.3f}"))
    return rows


# -- 3 and 4. cache hit and coalescing --------------------------------------------------------

CACHE_WHAT = "cache hit over HTTP, p50 / raw redis-py GET of the same bytes, p50"
COALESCE_WHAT = "upstream calls for 100 identical concurrent calls (cold cache, L = 500 ms)"


async def cache_rows(h: Harness, redis_url: str, sizes: Sizes) -> list[Row]:
    try:
        import redis.asyncio as redis

        client = redis.Redis.from_url(redis_url)
        await client.ping()
    except Exception as exc:
        reason = f"Redis at {redis_url} unreachable ({type(exc).__name__})"
        return [unavailable("3", CACHE_WHAT, "<= 10", reason),
                unavailable("4", COALESCE_WHAT, "= 1", reason)]
    prefix = f"featurelm-bench-{uuid.uuid4().hex[:12]}:"
    try:
        try:
            server = h.start_featurelm("featurelm-redis", cache=redis_url, key_prefix=prefix)
        except RuntimeError as exc:
            reason = "featurelm does not start with a Redis cache: " + \
                     str(exc).strip().splitlines()[-1][:200]
            return [unavailable("3", CACHE_WHAT, "<= 10", reason),
                    unavailable("4", COALESCE_WHAT, "= 1", reason)]
        try:
            return [await cache_hit(h, server, client, prefix, sizes),
                    await coalescing(h, server, sizes)]
        finally:
            h.stop(server)
    finally:
        async for key in client.scan_iter(match=prefix + "*", count=1000):
            await client.delete(key)
        await client.aclose()


async def cache_hit(h: Harness, server: Server, client: Any, prefix: str, sizes: Sizes) -> Row:
    await h.mock_control(latency_s=0.0, violation_rate=0.0)
    conn = Connection(server.url)
    try:
        status, _first = await conn.post_json(FEATURE_PATH, feature_request())
        status2, second = await conn.post_json(FEATURE_PATH, feature_request())
        if status != 200 or status2 != 200 or not second["meta"].get("cached"):
            return unavailable("3", CACHE_WHAT, "<= 10",
                               "a repeated call was not answered from the cache")
        entries = [key async for key in client.scan_iter(match=prefix + "*", count=1000)
                   if (await client.type(key)) == b"string"
                   and (await client.get(key) or b"").startswith(b'{"output"')]
        if not entries:
            return unavailable("3", CACHE_WHAT, "<= 10",
                               f"no cache entry found under the key prefix {prefix!r}")
        key = entries[0]
        stored = await client.get(key)
        before = await h.mock_completions()

        async def redis_get() -> bool:
            return bool(await client.get(key) == stored)

        lat = await interleaved({"http": feature_call(conn), "redis": redis_get},
                                sizes.cache_rounds, sizes.warmup)
        upstream = await h.mock_completions() - before
    finally:
        await conn.close()
    if upstream:
        return unavailable("3", CACHE_WHAT, "<= 10",
                           f"{upstream} calls reached the mock: not cache hits")
    return ratio_row("3", CACHE_WHAT, "<= 10", lat["http"].p50 / lat["redis"].p50,
                     lambda r: r <= 10,
                     f"HTTP hit {ms(lat['http'].p50)}, GET {ms(lat['redis'].p50)} "
                     f"({len(stored)} bytes); {sizes.cache_rounds} calls each")


async def coalescing(h: Harness, server: Server, sizes: Sizes, latency_s: float = 0.5) -> Row:
    await h.mock_control(latency_s=latency_s, violation_rate=0.0)
    # A text never asked before: the cache is cold for this call.
    payload = {"input": {"text": f"Coalesce me {uuid.uuid4().hex}"},
               "options": {"cache": "default"}}
    conns = [Connection(server.url) for _ in range(sizes.coalesce)]
    try:
        before = await h.mock_completions()
        answers = await asyncio.gather(*(feature_call(c, payload)() for c in conns),
                                       return_exceptions=True)
        upstream = await h.mock_completions() - before
    finally:
        await h.mock_control(latency_s=0.0)
        for conn in conns:
            await conn.close()
    ok = sum(a is True for a in answers)
    return ratio_row("4", COALESCE_WHAT.replace("100", str(sizes.coalesce)), "= 1",
                     float(upstream), lambda r: r == 1 and ok == len(answers),
                     f"{ok}/{len(answers)} answered 200 with valid output", fmt="{:.0f}")


# -- 5. cold start and memory -----------------------------------------------------------------

BARE_APP = """
import uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get("/")
async def root():
    return {"ok": True}
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
"""


async def rss_after_a_call(h: Harness, server: Server) -> float:
    """RSS once a first call was answered: what loads on first use shows up here."""
    await h.mock_control(latency_s=0.0, violation_rate=0.0)
    conn = Connection(server.url)
    try:
        if not await feature_call(conn)():
            raise RuntimeError("the first call after a cold start failed")
    finally:
        await conn.close()
    time.sleep(1.0)
    return server.proc.rss_mib()


async def cold_start(h: Harness, litellm_python: Path | None, litellm_env: dict[str, str],
                     sizes: Sizes) -> list[Row]:
    what = "featurelm start-to-ready / `python -c \"import litellm\"`"
    config = write_featurelm_project(h.root, mock_url=h.mock_url, cache="memory",
                                     name="featurelm-cold")
    ready: list[float] = []
    imports: list[float] = []
    rss: list[float] = []
    after_call: list[float] = []
    for i in range(sizes.cold_starts):
        (config.parent / "featurelm.db").unlink(missing_ok=True)
        server = h.start(f"featurelm-cold-{i}", featurelm_argv(config, "{port}"), "/readyz",
                         core=h.cores.gateway)
        ready.append(server.ready_s)
        time.sleep(1.0)  # idle: let startup garbage settle before reading RSS
        rss.append(server.proc.rss_mib())
        after_call.append(await rss_after_a_call(h, server))
        h.stop(server)
        if litellm_python is not None:
            started = time.perf_counter()
            proc = Proc(f"import-litellm-{i}", [str(litellm_python), "-c", "import litellm"],
                        core=h.cores.gateway, log_dir=h.root, env=litellm_env)
            if proc.popen.wait(120) != 0:
                raise RuntimeError(f"import litellm failed:\n{proc.log_tail()}")
            imports.append(time.perf_counter() - started)
            proc.stop()
    bare = h.start("bare-fastapi", [PYTHON, "-c", BARE_APP], "/", core=h.cores.gateway)
    time.sleep(1.0)
    bare_rss = bare.proc.rss_mib()
    h.stop(bare)
    ours, our_rss = statistics.median(ready), statistics.median(rss)
    rows = []
    if imports:
        theirs = statistics.median(imports)
        rows.append(ratio_row("5a", what, "<= 0.30", ours / theirs, lambda r: r <= 0.3,
                              f"featurelm ready in {ours:.2f} s (to /readyz 200), import "
                              f"litellm {theirs:.2f} s; median of {sizes.cold_starts}"))
    else:
        rows.append(unavailable("5a", what, "<= 0.30", f"LiteLLM not installed; featurelm "
                                                       f"ready in {ours:.2f} s"))
    rows.append(ratio_row("5b", "featurelm idle RSS / bare FastAPI app idle RSS", "<= 1.50",
                          our_rss / bare_rss, lambda r: r <= 1.5,
                          f"featurelm {our_rss:.0f} MiB ({statistics.median(after_call):.0f}"
                          f" MiB once it answered a call), bare FastAPI + uvicorn "
                          f"{bare_rss:.0f} MiB"))
    return rows


# -- 6. structured output cost ----------------------------------------------------------------

async def structured(h: Harness, fl: Server, sizes: Sizes, rate: float = 0.2) -> list[Row]:
    results = {}
    conn = Connection(fl.url)
    try:
        for p, calls in ((rate, sizes.structured_calls), (0.0, sizes.structured_calls // 2)):
            await h.mock_control(latency_s=0.0, violation_rate=p, reset=True)
            valid = 0
            call = feature_call(conn)
            for _ in range(calls):
                answered = await call()
                valid += answered
            upstream = await h.mock_completions()
            results[p] = (upstream / valid if valid else float("inf"), upstream, valid, calls)
    finally:
        await h.mock_control(violation_rate=0.0, reset=True)
        await conn.close()
    bound = 1 / (1 - rate) + 0.05
    per, upstream, valid, calls = results[rate]
    per0, upstream0, valid0, calls0 = results[0.0]
    return [
        ratio_row("6a", f"upstream calls per valid response, p = {rate}",
                  f"<= {bound:.2f}", per, lambda r: r <= bound,
                  f"{upstream} upstream calls, {valid}/{calls} valid (1/(1-p) = "
                  f"{1 / (1 - rate):.2f})", fmt="{:.3f}"),
        ratio_row("6b", "upstream calls per valid response, p = 0", "= 1.000", per0,
                  lambda r: r == 1.0, f"{upstream0} upstream calls, {valid0}/{calls0} valid",
                  fmt="{:.3f}"),
    ]


# -- 8. cost of call traces ----------------------------------------------------------------------

async def tracing(h: Harness, sizes: Sizes) -> list[Row]:
    """Per-call overhead over the mock with traces off (sample_rate 0) and on (1), against a
    server with no `traces:` key at all, interleaved in one run."""
    await h.mock_control(latency_s=0.0, violation_rate=0.0)
    servers = {"baseline": h.start_featurelm("trace-baseline"),
               "off": h.start_featurelm("trace-off", extra={"traces": {"sample_rate": 0}}),
               "on": h.start_featurelm("trace-on", extra={"traces": {"sample_rate": 1}})}
    conns = {"direct": Connection(h.mock_url),
             **{name: Connection(server.url) for name, server in servers.items()}}
    calls: dict[str, Call] = {"direct": chat_call(conns["direct"]),
                              **{name: distinct_feature_call(conns[name]) for name in servers}}
    try:
        lat = await interleaved(calls, sizes.latency_rounds, sizes.warmup)
    finally:
        for conn in conns.values():
            await conn.close()
        for server in servers.values():
            h.stop(server)
    over = {name: lat[name].p50 - lat["direct"].p50 for name in servers}
    detail = (f"p50 over the mock: no traces key +{ms(over['baseline'])}, sample_rate 0 "
              f"+{ms(over['off'])}, sample_rate 1 +{ms(over['on'])}; "
              f"{sizes.latency_rounds} calls each, interleaved")
    if over["baseline"] <= 0:
        return [unavailable("8a", "traces off / no traces, overhead p50", "<= 1.10", detail),
                unavailable("8b", "traces on / no traces, overhead p50", "report", detail)]
    return [ratio_row("8a", "traces off / no traces, overhead p50", "<= 1.10",
                      over["off"] / over["baseline"], lambda v: v <= 1.10, detail),
            ratio_row("8b", "traces on (rate 1) / no traces, overhead p50", "report",
                      over["on"] / over["baseline"], lambda v: True, detail)]
