"""A lean HTTP/1.1 client for the OpenAI-compatible adapter: keep-alive connections pooled per
replica and event loop, responses parsed by httptools (llhttp, the parser uvicorn runs).

Why not a general client: each call is one POST of a JSON body to a known origin, with no
redirects, cookies, proxies or compression, and at hundreds of calls in flight the client's
own bookkeeping was the largest item of a call's CPU. Measured against the bench's mock on one
core, an aiohttp request cost 220 us of CPU and this client's 53 us.

Timeouts: connecting is bounded by `connect_timeout`; each wait for the server (for the
response's headers, or for more of its body) by `read_timeout`; and every wait by the call's
own deadline. A connection goes back to the pool only after a complete response the server
means to keep alive; anything else (an error, a cancelled call, a stream left early) closes it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from featurelm.engine.backends.provider_errors import MalformedResponse

#: A larger answer is not a chat completion: refused rather than held in memory.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: How long a resolved host name is reused for new connections (as aiohttp's default).
DNS_TTL_S = 10.0


class ConnectionDropped(ConnectionError):
    """The server closed the connection before its response was complete."""


class ConnectFailed(ConnectionError):
    """No connection could be opened (refused, unreachable, unknown host)."""


class Endpoint:
    """One URL requests are POSTed to, parsed once: its origin and the request head up to the
    body's length, the only part that changes between calls."""

    def __init__(self, url: str, headers: Mapping[str, str], *, keep_alive: bool) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        #: The key its connections are pooled under.
        self.origin = (self.host, self.port, self.tls)
        lines = [f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
                 f"Host: {parts.netloc.rpartition('@')[2]}", "User-Agent: featurelm",
                 *(f"{name}: {value}" for name, value in headers.items())]
        if not keep_alive:
            lines.append("Connection: close")
        if any(c in text for text in (*headers.keys(), *headers.values()) for c in "\r\n\0"):
            raise ValueError("header names and values may not contain line breaks")
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")

    def request(self, body: bytes) -> bytes:
        return b"%s%d\r\n\r\n%s" % (self._head, len(body), body)


class Response:
    """The response on one connection: status and headers once they arrived, then the body,
    read whole or line by line."""

    def __init__(self, conn: _Connection, read_timeout: float, deadline: float | None) -> None:
        self._conn = conn
        self._loop = conn.loop
        self._read_timeout = read_timeout
        self._deadline = deadline
        self.status = 0
        self.keep_alive = False
        self.complete = False
        #: Whether the body's end is marked (a length or chunks) rather than the connection's.
        self.framed = False
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in self._raw_headers}

    @property
    def content_type(self) -> str:
        for name, value in self._raw_headers:
            if name.lower() == b"content-type":
                return value.decode("latin-1").split(";")[0].strip().lower()
        return ""

    async def started(self) -> None:
        """Wait for the status line and headers."""
        while not self.status:
            await self._wait()

    async def read(self) -> bytes:
        while not self.complete:
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        return body

    async def lines(self) -> AsyncIterator[bytes]:
        """The body split at line feeds, each line yielded as soon as it is complete."""
        pending = b""
        while True:
            if self._chunks:
                data = pending + b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = len(data)
                *complete, pending = data.split(b"\n")
                for line in complete:
                    yield line
            elif self.complete:
                if pending:
                    yield pending
                return
            else:
                await self._wait()

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        limit = self._read_timeout
        if self._deadline is not None:
            limit = min(limit, self._deadline - self._loop.time())
        if limit <= 0:
            raise TimeoutError("the call's deadline passed")
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(limit, _expire, waiter, limit)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._error is not None:
            raise self._error

    # -- called by the connection ------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
            self._wake()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._conn.parser
        self.status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        self.framed = any(name.lower() in (b"content-length", b"transfer-encoding")
                          for name, _ in self._raw_headers)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._buffered += len(body)
        if self._buffered > MAX_BODY_BYTES:
            self._fail(MalformedResponse(
                f"response body over {MAX_BODY_BYTES // (1024 * 1024)} MiB"))
            self._conn.close()
            return
        self._chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()


def _expire(waiter: asyncio.Future[None], limit: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no answer from the server within {limit:.3g} s"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, read_timeout: float, deadline: float | None) -> Response:
        assert self.transport is not None
        self.response = Response(self, read_timeout, deadline)
        self.transport.write(request)
        return self.response

    def data_received(self, data: bytes) -> None:
        if self.response is None or self.response.complete:
            # Bytes nobody asked for: the connection cannot be trusted with the next call.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.response._fail(MalformedResponse(f"invalid HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is None or response.complete:
            return
        if response.status and not response.framed:
            # A body without a length or chunks ends with the connection.
            response.on_message_complete()
        else:
            response._fail(ConnectionDropped("the server closed the connection mid-response"))

    # httptools calls these on the connection; the response in progress takes them.
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.on_body(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response.on_message_complete()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Client:
    """Connections to any number of endpoints, for one event loop."""

    def __init__(self, *, connect_timeout: float, read_timeout: float,
                 keepalive_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive_s = keepalive_s
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._addresses: dict[str, tuple[float, list[Any]]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._sweep: asyncio.TimerHandle | None = None

    def post(self, endpoint: Endpoint, body: bytes, *, timeout: float | None,
             read_timeout: float | None = None) -> Exchange:
        """`async with client.post(...) as response:` the response, its connection released
        (or closed) when the block ends. `timeout` bounds the whole exchange; `read_timeout`
        (default: the client's) each wait for the server."""
        deadline = None if timeout is None else self.loop.time() + timeout
        return Exchange(self, endpoint, endpoint.request(body), deadline,
                        self._read_timeout if read_timeout is None else read_timeout)

    async def _connection(self, endpoint: Endpoint, deadline: float | None) -> _Connection:
        idle = self._idle.get(endpoint.origin)
        now = self.loop.time()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be timed out
            if not conn.closed and now - conn.idle_since < self._keepalive_s:
                self._busy.add(conn)
                return conn
            conn.close()
        conn = await self._open(endpoint, deadline)
        self._busy.add(conn)
        return conn

    async def _open(self, endpoint: Endpoint, deadline: float | None) -> _Connection:
        budget = self._connect_timeout
        if deadline is not None:
            budget = min(budget, deadline - self.loop.time())
        if budget <= 0:
            raise TimeoutError("the call's deadline passed")
        if endpoint.tls and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            async with asyncio.timeout(budget):
                address = await self._resolve(endpoint)
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self.loop), address[0], address[1],
                    ssl=self._ssl if endpoint.tls else None,
                    server_hostname=endpoint.host if endpoint.tls else None)
        except TimeoutError:
            raise TimeoutError(f"connecting to {endpoint.host} took over {budget:.3g} s"
                               ) from None
        except ssl.SSLError:
            raise
        except OSError as exc:
            self._addresses.pop(endpoint.host, None)
            raise ConnectFailed(f"cannot connect to {endpoint.host}:{endpoint.port}: "
                                f"{exc.strerror or exc}") from exc
        return conn

    async def _resolve(self, endpoint: Endpoint) -> Any:
        """The address to connect to; host names are looked up once per DNS_TTL_S, so a burst
        of new connections does not queue a lookup each on the resolver's threads."""
        try:
            ipaddress.ip_address(endpoint.host)
            return endpoint.host, endpoint.port
        except ValueError:
            pass
        cached = self._addresses.get(endpoint.host)
        if cached is None or cached[0] < self.loop.time():
            infos = await self.loop.getaddrinfo(endpoint.host, endpoint.port,
                                                type=socket.SOCK_STREAM)
            cached = (self.loop.time() + DNS_TTL_S, [info[4] for info in infos])
            self._addresses[endpoint.host] = cached
        return cached[1][0]

    def _release(self, endpoint: Endpoint, conn: _Connection) -> None:
        self._busy.discard(conn)
        response = conn.response
        if (conn.closed or response is None or not response.complete
                or not response.keep_alive or self._keepalive_s <= 0):
            conn.close()
            return
        conn.response = None
        conn.idle_since = self.loop.time()
        self._idle.setdefault(endpoint.origin, []).append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._keepalive_s, self._close_stale)

    def _discard(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.close()

    def _close_stale(self) -> None:
        """Close connections idle past keepalive_s; runs while any are idle."""
        self._sweep = None
        cutoff = self.loop.time() - self._keepalive_s
        for key, idle in list(self._idle.items()):
            kept = [conn for conn in idle if not conn.closed and conn.idle_since > cutoff]
            for conn in idle:
                if conn.closed or conn.idle_since <= cutoff:
                    conn.close()
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        if self._idle:
            self._sweep = self.loop.call_later(self._keepalive_s, self._close_stale)

    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def aclose(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in [*self._busy, *(c for idle in self._idle.values() for c in idle)]:
            conn.close()
        self._busy.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing


class Exchange:
    """One request and its response: `async with` sends it and waits for the headers."""

    def __init__(self, client: Client, endpoint: Endpoint, request: bytes,
                 deadline: float | None, read_timeout: float) -> None:
        self._client = client
        self._endpoint = endpoint
        self._request = request
        self._deadline = deadline
        self._read_timeout = read_timeout
        self._conn: _Connection | None = None

    async def __aenter__(self) -> Response:
        client = self._client
        conn = self._conn = await client._connection(self._endpoint, self._deadline)
        response = conn.send(self._request, self._read_timeout, self._deadline)
        try:
            await response.started()
        except BaseException:
            client._discard(conn)
            raise
        return response

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._conn is not None
        if exc_info[0] is None:
            self._client._release(self._endpoint, self._conn)
        else:
            self._client._discard(self._conn)
