"""Rows 9 and 10: featurelm at production concurrency, side by side with the client straight
to the mock (direct) and the LiteLLM proxy: hundreds to thousands of calls in flight at real
model latencies, connection bursts, CPU per call and memory per call in flight, and a thousand
concurrent server-sent-event streams (see docs/bench.md)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import Call, Connection, HttpError, LoadResult, Streamed, closed_loop
from bench.harness import Harness, Server
from bench.procs import _children
from bench.project import INPUT, chat_request
from bench.report import Row, ratio_row, unavailable
from bench.rows import CHAT_PATH, FEATURE_PATH, chat_call

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Load:
    """`clients` callers in a closed loop at model latency `latency_s`. With `warmup` calls
    per client first (every connection open, pools filled) it is the steady state; with none,
    every client connects in the same instant: a burst."""

    key: str
    clients: int
    latency_s: float
    per_client: int
    warmup: int = 3
    target: float | None = None

    @property
    def ideal(self) -> float:
        return self.clients / self.latency_s

    @property
    def label(self) -> str:
        shape = "all connect at once" if self.warmup == 0 else "steady state"
        return (f"{self.clients} clients, L = {self.latency_s * 1000:.0f} ms, "
                f"{self.per_client} calls each, {shape}")


@dataclass(frozen=True)
class ScaleSizes:
    """How much rows 9 and 10 measure; `quick` is for the smoke test."""

    loads: tuple[Load, ...] = (
        Load("9a", 256, 0.2, 32, target=0.85),
        Load("9b", 1024, 1.0, 24, target=0.85),
        Load("9c", 1024, 1.0, 8, warmup=0, target=0.75),
        Load("9d", 2048, 2.0, 8, warmup=2, target=0.75),
    )
    #: The reference for CPU per call: row 2's load (64 in flight at 50 ms).
    baseline: Load = field(default=Load("9e", 64, 0.05, 64))
    #: The row whose CPU per call is compared with the baseline's (1024 in flight).
    compare: str = "9b"
    #: Calls per client through the LiteLLM proxy (about 110 calls/s: a full load would take
    #: minutes), and how long its whole load may take.
    litellm_per_client: int = 2
    litellm_timeout_s: float = 240.0
    streams: int = 1000
    stream_rounds: int = 2
    stream_latency_s: float = 2.0
    #: A featurelm server of its own for each load (memory per call in flight from a clean
    #: start); the quick mode shares one, as starting servers is most of its time.
    fresh_servers: bool = True
    #: Row 11: a load one process cannot keep up with (calls/s far above what a core serves).
    saturating: Load = field(default=Load("11", 1024, 0.1, 16))

    @classmethod
    def quick(cls) -> ScaleSizes:
        return cls(loads=(Load("9a", 8, 0.02, 3, target=0.85), Load("9b", 16, 0.05, 3,
                                                                    target=0.85),
                          Load("9c", 16, 0.05, 2, warmup=0, target=0.75),
                          Load("9d", 24, 0.05, 2, warmup=1, target=0.75)),
                   baseline=Load("9e", 4, 0.02, 3), litellm_per_client=1,
                   litellm_timeout_s=60.0, streams=8, stream_rounds=1, stream_latency_s=0.1,
                   fresh_servers=False, saturating=Load("11", 16, 0.01, 3))


# -- what a process spends ----------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (from /proc; 0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its children (the workers of `featurelm serve --workers N`)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in _children(pid))


def tree_rss_kib(pid: int) -> int:
    return rss_kib(pid) + sum(rss_kib(child) for child in _children(pid))


@dataclass
class Usage:
    """CPU and peak memory of one process during a load."""

    pid: int
    cpu_s: float = 0.0
    rss_before_kib: int = 0
    rss_peak_kib: int = 0

    def growth_kib(self) -> int:
        return max(0, self.rss_peak_kib - self.rss_before_kib)


@contextlib.asynccontextmanager
async def watching(pid: int | None, interval_s: float = 0.05) -> AsyncIterator[Usage]:
    """CPU over the block and resident memory sampled during it (its peak)."""
    usage = Usage(pid or 0)
    if pid is None:
        yield usage
        return
    usage.rss_before_kib = usage.rss_peak_kib = tree_rss_kib(pid)
    started = tree_cpu_seconds(pid)

    async def sample() -> None:
        while True:
            usage.rss_peak_kib = max(usage.rss_peak_kib, tree_rss_kib(pid))
            await asyncio.sleep(interval_s)

    sampler = asyncio.create_task(sample())
    try:
        yield usage
    finally:
        sampler.cancel()
        usage.rss_peak_kib = max(usage.rss_peak_kib, tree_rss_kib(pid))
        usage.cpu_s = tree_cpu_seconds(pid) - started


@dataclass(frozen=True)
class Measured:
    result: LoadResult
    usage: Usage
    calls: int

    @property
    def cpu_ms_per_call(self) -> float:
        return self.usage.cpu_s / self.calls * 1000 if self.calls else 0.0

    def kib_per_call_in_flight(self, in_flight: int) -> float:
        return self.usage.growth_kib() / in_flight


async def run_load(make_call: Callable[[Connection], Call], server: Server | None, url: str,
                   load: Load, *, per_client: int | None = None,
                   timeout_s: float | None = None) -> Measured | None:
    """One closed-loop load; None when it ran past `timeout_s`."""
    per = load.per_client if per_client is None else per_client
    warmup = min(load.warmup, per) if per_client is not None else load.warmup
    async with watching(server.proc.pid if server else None) as usage:
        try:
            result = await asyncio.wait_for(closed_loop(
                make_call, url, clients=load.clients, per_client=per,
                warmup_per_client=warmup), timeout_s)
        except TimeoutError:
            return None
    return Measured(result, usage, load.clients * (per + warmup))


# -- 9. throughput at production concurrency ----------------------------------------------------

@contextlib.asynccontextmanager
async def fresh_featurelm(h: Harness, name: str) -> AsyncIterator[Server]:
    """A featurelm server with default settings that has served nothing yet, so the memory a
    load adds is not hidden by what an earlier load left in the allocator."""
    server = h.start_featurelm(name)
    try:
        # One call first: what loads on first use (tokenizer tables, templates) is not memory
        # per call in flight.
        conn = Connection(server.url)
        try:
            await Outcomes().call(conn)()
        finally:
            await conn.close()
        yield server
    finally:
        h.stop(server)


class Outcomes:
    """Feature calls with texts never sent before (see rows.distinct_feature_call), and the
    status and first words of each kind of failure, for the row's details."""

    def __init__(self) -> None:
        self.failures: Counter[str] = Counter()

    def call(self, conn: Connection) -> Call:
        async def call() -> bool:
            body = json.dumps({"input": {"text": f"{INPUT['text']} (#{next(_distinct)})"}})
            status, data = await conn.request("POST", FEATURE_PATH, body.encode())
            if status == 200 and b'"sentiment"' in data:
                return True
            try:
                reason = str(json.loads(data).get("detail", ""))[:80]
            except (ValueError, AttributeError):
                reason = data[:80].decode(errors="replace")
            self.failures[f"{status} {reason}"] += 1
            return False
        return call

    def summary(self) -> str:
        return "; ".join(f"{n} x {what}" for what, n in self.failures.most_common(2))


async def concurrency(h: Harness, ll: Server | None, sizes: ScaleSizes) -> list[Row]:
    rows: list[Row] = []
    cpu: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        shared = (None if sizes.fresh_servers else
                  await stack.enter_async_context(fresh_featurelm(h, "featurelm-9")))

        def featurelm(name: str) -> contextlib.AbstractAsyncContextManager[Server]:
            return contextlib.nullcontext(shared) if shared else fresh_featurelm(h, name)

        try:
            await h.mock_control(latency_s=sizes.baseline.latency_s, violation_rate=0.0)
            async with featurelm("featurelm-9-base") as fl:
                base = await run_load(Outcomes().call, fl, fl.url, sizes.baseline)
            assert base is not None
            cpu[sizes.baseline.key] = base.cpu_ms_per_call
            for load in sizes.loads:
                await h.mock_control(latency_s=load.latency_s)
                async with featurelm(f"featurelm-{load.key}") as fl:
                    rows.append(await _load_row(h, fl, ll, load, sizes, cpu))
        finally:
            await h.mock_control(latency_s=0.0)
    compare = cpu.get(sizes.compare)
    what = (f"featurelm CPU per call at {_load(sizes, sizes.compare).clients} in flight / "
            f"at {sizes.baseline.clients} in flight")
    if compare is None or not cpu[sizes.baseline.key]:
        rows.append(unavailable("9e", what, "<= 1.20", "a load did not finish"))
    else:
        rows.append(ratio_row(
            "9e", what, "<= 1.20", compare / cpu[sizes.baseline.key], lambda r: r <= 1.2,
            f"{compare:.3f} ms vs {cpu[sizes.baseline.key]:.3f} ms of CPU per call "
            f"({sizes.baseline.label}: {base.result.rate:.0f}/s = "
            f"{base.result.rate / sizes.baseline.ideal:.2f} of ideal)"))
    return rows


def _load(sizes: ScaleSizes, key: str) -> Load:
    return next(load for load in sizes.loads if load.key == key)


async def _load_row(h: Harness, fl: Server, ll: Server | None, load: Load, sizes: ScaleSizes,
                    cpu: dict[str, float]) -> Row:
    direct = await run_load(chat_call, None, h.mock_url, load)
    outcomes = Outcomes()
    ours = await run_load(outcomes.call, fl, fl.url, load)
    assert direct is not None and ours is not None
    cpu[load.key] = ours.cpu_ms_per_call
    theirs = "LiteLLM proxy not started"
    if ll is not None:
        measured = await run_load(chat_call, ll, ll.url, load,
                                  per_client=sizes.litellm_per_client,
                                  timeout_s=sizes.litellm_timeout_s)
        theirs = (f"LiteLLM did not finish in {sizes.litellm_timeout_s:.0f} s"
                  if measured is None else
                  f"LiteLLM {measured.result.rate:.0f}/s = "
                  f"{measured.result.rate / load.ideal:.2f} "
                  f"({measured.result.ok}/{measured.result.requests} ok, "
                  f"{sizes.litellm_per_client} calls each), "
                  f"{measured.cpu_ms_per_call:.2f} ms CPU per call")
    target = load.target or 0.0
    errors = ours.result.requests - ours.result.ok
    failed = f", {errors} failed ({outcomes.summary()})" if errors else ""
    detail = (f"featurelm {ours.result.rate:.0f}/s, {ours.cpu_ms_per_call:.3f} ms CPU per "
              f"call, {ours.kib_per_call_in_flight(load.clients):.1f} KiB per call in flight"
              f"{failed}; direct {direct.result.rate:.0f}/s = "
              f"{direct.result.rate / load.ideal:.2f}; {theirs}; {load.label}, ideal "
              f"{load.ideal:.0f}/s")
    return ratio_row(load.key, f"featurelm throughput / ideal, {load.clients} clients at "
                     f"{load.latency_s * 1000:.0f} ms{', burst' if load.warmup == 0 else ''}",
                     f">= {target:.2f}", ours.result.rate / load.ideal,
                     lambda r: r >= target and errors == 0, detail)


# -- 10. concurrent server-sent-event streams ---------------------------------------------------

_streamed = itertools.count()
_distinct = itertools.count()


def _feature_stream_body() -> bytes:
    return json.dumps({"input": {"text": f"{INPUT['text']} (stream #{next(_streamed)})"}}
                      ).encode()


async def _streams(url: str, path: str, body: Callable[[], bytes], marker: bytes, clients: int,
                   rounds: int) -> list[Streamed | None]:
    """`clients` connections each streaming `rounds` replies one after the other, all at once."""
    connections = [Connection(url) for _ in range(clients)]
    replies: list[Streamed | None] = []

    async def client(conn: Connection) -> None:
        for _ in range(rounds):
            try:
                replies.append(await conn.stream(path, body(), marker))
            except (HttpError, OSError):
                replies.append(None)

    try:
        await asyncio.gather(*(client(c) for c in connections))
    finally:
        for conn in connections:
            await conn.close()
    return replies


def _complete(reply: Streamed | None, *, featurelm: bool) -> bool:
    if reply is None or reply.status != 200 or not reply.first_text_s:
        return False
    return b"event: result" in reply.body if featurelm else b"[DONE]" in reply.body


async def streams(h: Harness, sizes: ScaleSizes) -> list[Row]:
    n, rounds = sizes.streams, sizes.stream_rounds
    await h.mock_control(latency_s=sizes.stream_latency_s, violation_rate=0.0)
    direct_body = json.dumps({**chat_request(), "stream": True,
                              "stream_options": {"include_usage": True}}).encode()
    try:
        direct = await _streams(h.mock_url, CHAT_PATH, lambda: direct_body, b'"content"', n,
                                rounds)
        async with fresh_featurelm(h, "featurelm-10") as fl, watching(fl.proc.pid) as usage:
            ours = await _streams(fl.url, FEATURE_PATH, _feature_stream_body,
                                  b"event: delta", n, rounds)
    finally:
        await h.mock_control(latency_s=0.0)
    done = [r for r in ours if r is not None and _complete(r, featurelm=True)]
    direct_done = [r for r in direct if r is not None and _complete(r, featurelm=False)]
    total = n * rounds
    chunks = sum(r.chunks for r in done)
    what = f"featurelm SSE streams completed / streams ({n} concurrent)"
    if not done or not direct_done:
        return [unavailable("10a", what, "= 1.00", f"{len(done)}/{total} featurelm streams, "
                                                   f"{len(direct_done)}/{total} direct"),
                unavailable("10b", "time to first text over featurelm / direct, p50",
                            "<= 1.25", "no stream completed")]
    ours_first = statistics.median(r.first_text_s for r in done)
    direct_first = statistics.median(r.first_text_s for r in direct_done)
    first_byte = statistics.median(r.first_byte_s for r in done)
    detail = (f"{usage.growth_kib() / n:.1f} KiB per stream held "
              f"({usage.rss_before_kib / 1024:.0f} -> {usage.rss_peak_kib / 1024:.0f} MiB), "
              f"{usage.cpu_s / chunks * 1e6:.0f} us CPU per streamed chunk ({chunks} chunks, "
              f"{usage.cpu_s / len(done) * 1000:.2f} ms per stream); {rounds} streams per "
              f"connection, model reply over {sizes.stream_latency_s:.1f} s")
    return [
        ratio_row("10a", what, "= 1.00", len(done) / total, lambda r: r == 1.0, detail,
                  fmt="{:.3f}"),
        ratio_row("10b", "time to first text over featurelm / direct, p50", "<= 1.25",
                  ours_first / direct_first, lambda r: r <= 1.25,
                  f"first delta after {ours_first * 1000:.0f} ms (first byte "
                  f"{first_byte * 1000:.0f} ms) vs direct {direct_first * 1000:.0f} ms; "
                  f"{len(direct_done)}/{total} direct streams complete"),
    ]


def raise_open_files(wanted: int = 65536) -> int:
    """Lift this process's open-files limit (children inherit it): thousands of clients and
    as many upstream connections need more than the usual 1024. Returns the limit now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- 11. worker processes ---------------------------------------------------------------------

async def workers(h: Harness, sizes: ScaleSizes) -> list[Row]:
    """Calls/s of `featurelm serve --workers N` on every core over one process on one core,
    under a load neither keeps up with. The mock and the client share the first core, so on
    a small machine the workers compete with them: the row shows what the cores give, not
    N times one core."""
    cores = h.cores.every
    load = sizes.saturating
    what = f"featurelm --workers {len(cores)} on {len(cores)} cores / 1 process on 1 core"
    if len(cores) < 2:
        return [unavailable("11", what, "report", "one core: nothing to share")]
    await h.mock_control(latency_s=load.latency_s, violation_rate=0.0)
    measured: dict[int, Measured] = {}
    try:
        for count, where in ((1, None), (len(cores), cores)):
            server = h.start_featurelm(f"featurelm-workers-{count}", core=where,
                                       workers=count)
            try:
                result = await run_load(Outcomes().call, server, server.url, load)
                assert result is not None
                measured[count] = result
            finally:
                h.stop(server)
    finally:
        await h.mock_control(latency_s=0.0)
    one, many = measured[1], measured[len(cores)]
    return [ratio_row("11", what, "report", many.result.rate / one.result.rate,
                      lambda r: True,
                      f"{many.result.rate:.0f}/s ({many.cpu_ms_per_call:.3f} ms CPU per call) "
                      f"vs {one.result.rate:.0f}/s ({one.cpu_ms_per_call:.3f} ms); {load.label}, "
                      f"ideal {load.ideal:.0f}/s; mock and client share core "
                      f"{h.cores.client} with a worker")]
