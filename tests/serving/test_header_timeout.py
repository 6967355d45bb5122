"""Slow or half-open clients that never finish a request's headers are disconnected after
`http.header_timeout_s`, while complete requests, slow ones included, are served."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from featurelm.serving.connections import H11HeaderTimeout, http_protocol
from tests.conftest import free_port
from tests.serving.conftest import LiveServer, start_server, write_project
from tests.serving.test_failure_isolation import NOTE, OK

TIMEOUT_S = 2.0
#: A backend slower than the header timeout: the call must still be answered.
SLOW = {"kind": "scripted", "options": {"replies": ['{"sentiment": "positive"}'], "delay": 3}}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    config = write_project(
        tmp_path_factory.mktemp("headers"),
        features=[NOTE, {**NOTE, "name": "slow", "model": {**NOTE["model"], "route": "slow"}}],
        backends={"primary": OK, "slow": SLOW},
        routes={"default": {"backends": ["primary"]}, "slow": {"backends": ["slow"]}},
        auth="required", http={"header_timeout_s": TIMEOUT_S, "drain_s": 0.1})
    server = start_server(config, ["acme"])
    yield server
    server.stop()


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_after(sock: socket.socket, since: float | None = None) -> float:
    """Seconds from `since` (default: now) until the server closes `sock` without answering."""
    started = time.monotonic() if since is None else since
    assert sock.recv(4096) == b""
    return time.monotonic() - started


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_partial_headers_are_closed_while_other_connections_are_served(
        live: LiveServer) -> None:
    with _connect(live.url) as stalled:
        connected = time.monotonic()
        stalled.sendall(b"POST /v1/features/note HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        response = httpx.post(live.url + "/v1/features/note", json={"input": {"body": "fine"}},
                              headers=live.keys.bearer("acme"), timeout=10)
        assert response.status_code == 200
        assert TIMEOUT_S * 0.8 < _closed_after(stalled, connected) < TIMEOUT_S + 3


def test_a_connection_that_sends_nothing_is_closed(live: LiveServer) -> None:
    with _connect(live.url) as idle:
        assert _closed_after(idle) < TIMEOUT_S + 3


def test_slow_but_complete_headers_within_the_limit_are_served(live: LiveServer) -> None:
    key = live.keys.tenants["acme"]
    body = b'{"input": {"body": "fine"}}'
    request = (f"POST /v1/features/note HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode()
    with _connect(live.url) as sock:
        for start in range(0, len(request), len(request) // 5 + 1):
            sock.sendall(request[start:start + len(request) // 5 + 1])
            time.sleep(TIMEOUT_S / 20)  # about a third of the limit in all, with room for load
        sock.sendall(body)
        assert _read_response(sock).startswith(b"HTTP/1.1 200")


def test_a_request_slower_than_the_header_timeout_is_not_cut_off(live: LiveServer) -> None:
    response = httpx.post(live.url + "/v1/features/slow", json={"input": {"body": "fine"}},
                          headers=live.keys.bearer("acme"), timeout=30)
    assert response.status_code == 200  # the backend took 3 s, past the header timeout


def test_the_timer_rearms_after_a_keep_alive_response(live: LiveServer) -> None:
    with _connect(live.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        # uvicorn's keep-alive timer stopped when these bytes came: only ours closes it.
        assert _closed_after(sock) < TIMEOUT_S + 3


# -- both protocol implementations, in process -------------------------------------------------

IN_PROCESS_S = 1.0


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(IN_PROCESS_S * 1.5)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=["h11", "auto"])
def in_process(request: pytest.FixtureRequest) -> Iterator[str]:
    protocol = (type("H11", (H11HeaderTimeout,), {"header_timeout_s": IN_PROCESS_S})
                if request.param == "h11" else http_protocol(IN_PROCESS_S))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_app, host="127.0.0.1", port=port, http=protocol,
                                           log_config=None, lifespan="off", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_each_protocol_closes_partial_headers_and_serves_slow_requests(in_process: str) -> None:
    with _connect(in_process) as stalled, _connect(in_process) as slow:
        stalled.sendall(b"GET / HTTP/1.1\r\nHost")
        slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(slow).startswith(b"HTTP/1.1 200")
        assert _closed_after(stalled) < IN_PROCESS_S + 3
        slow.sendall(b"GET / HTTP/1.1\r\n")  # keep-alive: the next request's headers stall
        assert _closed_after(slow) < IN_PROCESS_S + 3


def test_a_busy_keep_alive_connection_outlives_the_timeout(in_process: str) -> None:
    # One timer per connection, set again for the time left: each request resets the wait.
    with _connect(in_process) as sock:
        started = time.monotonic()
        while time.monotonic() - started < IN_PROCESS_S * 3:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(sock).startswith(b"HTTP/1.1 200")
            time.sleep(IN_PROCESS_S * 0.4)
        sock.sendall(b"GET / HTTP/1.1\r\nHo")
        assert _closed_after(sock) < IN_PROCESS_S + 3
