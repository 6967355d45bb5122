"""The bench's load generator: a minimal keep-alive HTTP/1.1 client and latency statistics.

Every variant is driven by the same few lines of asyncio stream code, so the client's own
cost (tens of microseconds) is identical on both sides of a subtraction and small next to
what is measured; httpx or the OpenAI SDK would add 10x that, and their jitter, to each call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        reader, writer = await self._open()
        head = (f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
        writer.write(head.encode() + body)
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise HttpError(f"connection closed: {exc}") from None
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        length, chunked, close = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        data = await self._read_chunked(reader) if chunked else await reader.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def stream(self, path: str, body: bytes, marker: bytes) -> Streamed:
        """POST a streaming request (Accept: text/event-stream) and read the chunked reply as
        it arrives: when its first byte came, and the first chunk holding `marker`."""
        reader, writer = await self._open()
        started = time.perf_counter()
        head = (f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
                f"content-type: application/json\r\naccept: text/event-stream\r\n"
                f"content-length: {len(body)}\r\n\r\n")
        writer.write(head.encode() + body)
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
            status = int(raw.split(b" ", 2)[1])
            first_byte = first_marker = 0.0
            chunks = 0
            data = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                chunk = await reader.readexactly(size)
                await reader.readexactly(2)
                now = time.perf_counter() - started
                first_byte = first_byte or now
                if not first_marker and marker in chunk:
                    first_marker = now
                chunks += 1
                data += chunk
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError) as exc:
            await self.close()
            raise HttpError(f"stream broken: {exc}") from None
        return Streamed(status, first_byte, first_marker, time.perf_counter() - started,
                        chunks, bytes(data))

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        data = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(data)
            data += await reader.readexactly(size)
            await reader.readexactly(2)

    async def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        status, data = await self.request("POST", path, json.dumps(payload).encode())
        return status, json.loads(data) if data else None

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@dataclass(frozen=True)
class Streamed:
    """One streamed reply: status, seconds to its first byte, to the first chunk holding the
    marker (the first model text), to its end, and the chunks it came in."""

    status: int
    first_byte_s: float
    first_text_s: float
    total_s: float
    chunks: int
    body: bytes


@dataclass(frozen=True)
class Latencies:
    """Seconds per call of one variant."""

    samples: Sequence[float]

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples)
        # Nearest rank: p99 of 1000 samples is the 990th, not an interpolation.
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        return self.pct(99)


Call = Callable[[], Awaitable[bool]]


async def interleaved(calls: dict[str, Call], rounds: int, warmup: int = 50
                      ) -> dict[str, Latencies]:
    """Time `rounds` calls of each variant, one at a time, round-robin: a background burst on
    the shared machine then hits every variant alike instead of whichever ran at that moment.
    A call returns False if its answer was wrong; that fails the measurement."""
    for _ in range(warmup):
        for call in calls.values():
            await call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, call in calls.items():
            started = clock()
            ok = await call()
            samples[name].append(clock() - started)
            if not ok:
                raise HttpError(f"{name}: a call failed during the measurement")
    return {name: Latencies(values) for name, values in samples.items()}


@dataclass(frozen=True)
class LoadResult:
    requests: int
    ok: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def closed_loop(make_call: Callable[[Connection], Call], url: str, *, clients: int,
                      per_client: int, warmup_per_client: int = 3) -> LoadResult:
    """`clients` concurrent callers, each on its own connection, each sending its next
    request when the last one is answered (a closed loop, like 64 users of a product)."""
    connections = [Connection(url) for _ in range(clients)]
    try:
        async def warm(conn: Connection) -> None:
            call = make_call(conn)
            for _ in range(warmup_per_client):
                await call()

        await asyncio.gather(*(warm(c) for c in connections))
        ok = 0

        async def user(conn: Connection) -> None:
            nonlocal ok
            call = make_call(conn)
            for _ in range(per_client):
                try:
                    answered = await call()
                except (HttpError, OSError, ValueError):
                    await conn.close()
                    continue
                # Not `ok += await call()`: that reads `ok` before awaiting and loses counts.
                ok += answered

        started = time.perf_counter()
        await asyncio.gather(*(user(c) for c in connections))
        return LoadResult(clients * per_client, ok, time.perf_counter() - started)
    finally:
        for conn in connections:
            await conn.close()
