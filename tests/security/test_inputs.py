"""Hostile request bodies over HTTP: each is a clear 4xx problem+json, the server's memory stays
bounded, and it keeps serving."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.security.conftest import SecureServer, assert_problem, still_serves

pytestmark = pytest.mark.slow
CALL = "/v1/features/sentiment"

#: (id, raw body, status, words the refusal names)
BODIES: list[tuple[str, bytes, int, tuple[str, ...]]] = [
    ("deep arrays", b"[" * 100_000 + b"]" * 100_000, 422, ("nested too deeply",)),
    ("deep objects", b'{"a":' * 30_000 + b"1" + b"}" * 30_000, 422, ("nested too deeply",)),
    ("deep input under the parser limit", b'{"input": {"text": "x", "k": ' + b"[" * 500
     + b"]" * 500 + b"}}", 422, ("nested",)),
    ("invalid utf-8", b'{"input": {"text": "\xff\xfe\xfd"}}', 422, ("not valid json",)),
    ("NaN", b'{"input": {"text": NaN}}', 422, ("nan is not a json number",)),
    ("Infinity", b'{"input": {"text": -Infinity}}', 422, ("infinity is not a json number",)),
    ("overflowing float", b'{"input": {"text": 1e400}}', 422, ("out of range",)),
    ("huge integer", b'{"input": {"text": ' + b"9" * 10_000 + b"}}", 422, ("not valid json",)),
    ("duplicate keys", b'{"input": {"text": "a", "text": "b"}}', 422, ("duplicate key 'text'",)),
    ("duplicate top-level keys", b'{"input": {"text": "a"}, "input": {"text": "b"}}', 422,
     ("duplicate key 'input'",)),
    ("array body", b'[{"input": {"text": "a"}}]', 422, ("request body must be",)),
    ("string body", b'"hello"', 422, ("request body must be",)),
    ("null body", b"null", 422, ("request body must be",)),
    ("empty body", b"", 422, ("not valid json",)),
    ("input not an object", b'{"input": ["text"]}', 422, ("must be a json object",)),
    ("unknown top-level field", b'{"input": {"text": "a"}, "tenant": "globex"}', 422,
     ("request body must be",)),
    ("unknown option", b'{"input": {"text": "a"}, "options": {"backend": "x"}}', 422,
     ("options may contain only",)),
    ("huge string", b'{"input": {"text": "' + b"x" * 150_000 + b'"}}', 422,
     ("value fails maxLength: 2000",)),
    ("oversized body", b'{"input": {"text": "' + b"x" * 300_000 + b'"}}', 413,
     ("over the 200000-byte limit",)),
]


@pytest.mark.parametrize(("body", "status", "named"), [(b, s, n) for _, b, s, n in BODIES],
                         ids=[i for i, _, _, _ in BODIES])
def test_a_hostile_body_is_a_clear_4xx(http: httpx.Client, secure_server: SecureServer,
                                       body: bytes, status: int, named: tuple[str, ...]) -> None:
    for path in (CALL, CALL + "/batch"):
        sent = body.replace(b'{"input"', b'{"inputs"') if path.endswith("batch") else body
        response = http.post(path, content=sent, headers={
            **secure_server.bearer("acme"), "Content-Type": "application/json"})
        if path.endswith("batch") and status == 422 and response.status_code == 200:
            # An item-level refusal: the batch answers 200 with the problem for that item.
            continue
        assert_problem(response, status, *(n for n in named if not path.endswith("batch")))
    still_serves(http, secure_server)


def chunks(total: int, size: int = 16_384) -> Iterator[bytes]:
    yield b'{"input": {"text": "'
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}}'


def test_a_chunked_body_without_length_is_cut_off_at_the_limit(
        http: httpx.Client, secure_server: SecureServer) -> None:
    response = http.post(CALL, content=chunks(10_000_000), headers={
        **secure_server.bearer("acme"), "Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "over the 200000-byte limit")
    still_serves(http, secure_server)


def test_a_lying_content_length_is_refused_before_the_body_is_read(
        secure_server: SecureServer) -> None:
    url = urlsplit(secure_server.url)
    with socket.create_connection((url.hostname or "", url.port or 80), timeout=10) as sock:
        auth = secure_server.bearer("acme")["Authorization"]
        sock.sendall((f"POST {CALL} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n"
                      ).encode())
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head
    assert "application/problem+json" in head


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_memory_stays_bounded_under_hostile_bodies(http: httpx.Client,
                                                   secure_server: SecureServer) -> None:
    pid = secure_server.live.process.pid
    for _ in range(3):  # warm up allocator pools and caches
        test_a_chunked_body_without_length_is_cut_off_at_the_limit(http, secure_server)
    before = rss_kib(pid)
    for _ in range(20):
        for _, body, _, _ in BODIES[:3]:
            http.post(CALL, content=body, headers=secure_server.bearer("acme"))
        http.post(CALL, content=chunks(10_000_000), headers=secure_server.bearer("acme"))
    # 20 rounds of ~10 MB sent each: growth well under one round's bytes means nothing piled up.
    assert rss_kib(pid) - before < 20_000
    still_serves(http, secure_server)
