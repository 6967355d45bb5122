"""The OpenAI-compatible adapter's HTTP/1.1 client, against raw servers that answer the way
real ones can: chunked and connection-delimited bodies, garbage, oversized bodies, idle
connections the server closes, and the production event loop (uvloop)."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop

from featurelm.engine.backends import http1
from featurelm.engine.backends.http1 import Client, ConnectionDropped, Endpoint
from featurelm.engine.backends.openai_compat import OpenAICompatBackend, OpenAIOptions
from featurelm.engine.backends.provider_errors import MalformedResponse
from featurelm.engine.errors import BackendError
from featurelm.engine.testing import FaultServer
from featurelm.engine.types import CompletionRequest, Message

COMPLETION = json.dumps({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback server whose every connection runs `handler` (given the server, to read
    requests with); it counts connections and keeps the request heads it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return await reader.readexactly(length)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[RawServer, str]]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[RawServer, str]:
        raw = RawServer(handler)
        server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
        servers.append(server)
        return raw, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"

    yield start
    for server in servers:
        server.close()


def answer_once(payload: bytes, *, linger_s: float = 0.0) -> Handler:
    """Read one request, write `payload`, keep the connection open `linger_s`, close it."""
    async def handler(raw: RawServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        writer.write(payload)
        await writer.drain()
        await asyncio.sleep(linger_s)
    return handler


def answer_every_request(payload: bytes) -> Handler:
    """Answer each request on the connection with `payload`, keeping it alive."""
    async def handler(raw: RawServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while True:
            await raw.read_request(reader)
            writer.write(payload)
            await writer.drain()
    return handler


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s"
            b"\r\n%s" % (len(body), extra, body))


def request() -> CompletionRequest:
    return CompletionRequest(messages=(Message("user", "hello"),), timeout=5.0)


async def complete(url: str, **options: object) -> str:
    backend = OpenAICompatBackend("vllm", model="m", base_urls=[url], **options)  # type: ignore[arg-type]
    try:
        return (await backend.complete(request())).text
    finally:
        await backend.aclose()


def test_calls_work_on_uvloop_the_servers_event_loop() -> None:
    async def main() -> list[str]:
        with FaultServer() as server:
            backend = OpenAICompatBackend("vllm", model="m", base_urls=[server.url])
            try:
                texts = [(await backend.complete(request())).text for _ in range(3)]
                texts += ["".join([i async for i in backend.stream(request())
                                   if isinstance(i, str)])]
            finally:
                await backend.aclose()
            assert server.connections == 1
            return texts

    texts = uvloop.run(main())
    assert len(texts) == 4 and all(texts)


async def test_chunked_and_connection_delimited_bodies_are_read_whole(raw_server) -> None:
    async def chunked(raw, reader, writer):
        await raw.read_request(reader)
        half = len(COMPLETION) // 2
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (half, COMPLETION[:half]))
        await writer.drain()
        await asyncio.sleep(0.05)
        rest = COMPLETION[half:]
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        await writer.drain()

    _, url = await raw_server(chunked)
    _, url2 = await raw_server(answer_once(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
        + COMPLETION))
    assert await complete(url) == "hi"
    assert await complete(url2) == "hi"


async def test_a_connection_the_server_closed_while_idle_is_not_reused(raw_server) -> None:
    # Keep-alive by default, then closed anyway.
    raw, url = await raw_server(answer_once(ok(COMPLETION)))
    backend = OpenAICompatBackend("vllm", model="m", base_urls=[url])
    try:
        for _ in range(3):
            assert (await backend.complete(request())).text == "hi"
            await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
    finally:
        await backend.aclose()
    assert raw.connections == 3


async def test_keepalive_0_sends_connection_close_and_opens_one_connection_per_call(
        raw_server) -> None:
    raw, url = await raw_server(answer_every_request(ok(COMPLETION)))
    backend = OpenAICompatBackend("vllm", model="m", base_urls=[url], keepalive_s=0)
    try:
        for _ in range(3):
            await backend.complete(request())
    finally:
        await backend.aclose()
    assert raw.connections == 3
    assert all(b"\r\nConnection: close\r\n" in head for head in raw.heads)


@pytest.mark.parametrize("answer", [
    b"HELLO WORLD\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nabcdefg",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nnot hex\r\n",
])
async def test_a_response_that_is_not_http_is_a_retryable_malformed_response(
        raw_server, answer) -> None:
    _, url = await raw_server(answer_once(answer, linger_s=1))
    with pytest.raises(BackendError) as caught:
        await complete(url)
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, MalformedResponse)


async def test_a_body_over_the_size_cap_is_refused_and_its_connection_closed(
        raw_server, monkeypatch) -> None:
    monkeypatch.setattr(http1, "MAX_BODY_BYTES", 1000)

    _, url = await raw_server(answer_once(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b" " * 100000, linger_s=1))
    with pytest.raises(BackendError) as caught:
        await complete(url)
    assert "over" in str(caught.value.__cause__)


async def test_a_response_cut_off_midway_is_a_dropped_connection(raw_server) -> None:
    _, url = await raw_server(answer_once(
        b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n{\"choices\""))
    with pytest.raises(BackendError) as caught:
        await complete(url)
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, ConnectionDropped)


async def test_a_cancelled_call_closes_its_connection_and_the_next_opens_a_new_one(
        raw_server) -> None:
    async def slow_then_fast(raw, reader, writer):
        while True:
            await raw.read_request(reader)
            await asyncio.sleep(0.5 if raw.connections == 1 else 0)
            writer.write(ok(COMPLETION))
            await writer.drain()

    raw, url = await raw_server(slow_then_fast)
    backend = OpenAICompatBackend("vllm", model="m", base_urls=[url])
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await backend.complete(request())
        # The late answer to the cancelled call must not be read as this call's.
        assert (await backend.complete(request())).text == "hi"
    finally:
        await backend.aclose()
    assert raw.connections == 2


async def test_idle_connections_are_closed_after_keepalive_s(raw_server) -> None:
    _, url = await raw_server(answer_every_request(ok(COMPLETION)))
    client = Client(connect_timeout=1, read_timeout=1, keepalive_s=0.1)
    endpoint = Endpoint(url + "/chat/completions", {}, keep_alive=True)
    try:
        async with client.post(endpoint, b"{}", timeout=1) as response:
            assert await response.read() == COMPLETION
        assert client.idle_connections() == 1
        await asyncio.sleep(0.35)
        assert client.idle_connections() == 0
    finally:
        await client.aclose()


@pytest.mark.parametrize("headers", [{"X-Team": "a\r\nX-Evil: 1"}, {"X Bad": "1"},
                                     {"X-Name": "caf\u00e9\u2603"}])
def test_headers_that_would_break_the_request_head_are_refused_in_config(headers) -> None:
    with pytest.raises(ValueError, match="header"):
        OpenAIOptions(base_urls=["http://vllm:8000/v1"], headers=headers)


def test_the_request_head_names_the_host_and_length() -> None:
    endpoint = Endpoint("https://vllm.internal:8443/v1/chat/completions",
                        {"Content-Type": "application/json"}, keep_alive=True)
    request = endpoint.request(b"{}")
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: vllm.internal:8443\r\n")
    assert request.endswith(b"\r\nContent-Length: 2\r\n\r\n{}")
    assert (endpoint.host, endpoint.port, endpoint.tls) == ("vllm.internal", 8443, True)


async def test_a_tls_server_whose_certificate_cannot_be_verified_is_not_retried(
        raw_server) -> None:
    # A plain-text server behind an https URL fails the handshake like a bad certificate.
    async def plain(raw, reader, writer):
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    _, url = await raw_server(plain)
    with pytest.raises(BackendError) as caught:
        await complete(url.replace("http://", "https://"))
    assert not caught.value.retryable
    assert "TLS" in str(caught.value)


async def test_an_unknown_host_is_a_retryable_connection_failure() -> None:
    with pytest.raises(BackendError) as caught:
        await complete("http://no-such-host.invalid:8000/v1")
    assert caught.value.retryable and caught.value.provider_status is None
