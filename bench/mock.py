"""A lean OpenAI-compatible mock model server for the benchmarks: fixed latency, no model.

One asyncio protocol (uvloop when installed) parses HTTP/1.1 keep-alive requests by hand, so
the mock costs tens of microseconds per request and never is what a benchmark measures. It
answers `POST /v1/chat/completions` after `latency_s` with a canned reply, a schema-violating
one for a fraction `violation_rate` of calls, counts the completions it served, and is steered
by `POST /_control` and read by `GET /_stats`. Run: `python -m bench.mock --port 8101`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, cast

#: A valid reply for the bench feature (bench/project.py), and one that breaks its enum.
VALID_CONTENT = '{"sentiment": "positive"}'
INVALID_CONTENT = '{"sentiment": "ecstatic"}'
MAX_HEADER_BYTES = 64 * 1024


@dataclass
class MockState:
    latency_s: float = 0.0
    #: A streamed reply (`"stream": true`) comes in this many content events spread evenly
    #: over `latency_s`: the first after latency_s / stream_chunks, like a model's first token.
    stream_chunks: int = 8
    #: Share of completions answered with `invalid_content`, spread evenly (see `_violates`).
    violation_rate: float = 0.0
    valid_content: str = VALID_CONTENT
    invalid_content: str = INVALID_CONTENT
    completions: int = 0
    violations: int = 0
    started: float = field(default_factory=time.time)

    def configure(self, data: dict[str, Any]) -> None:
        if "latency_s" in data:
            self.latency_s = max(0.0, float(data["latency_s"]))
        if "stream_chunks" in data:
            self.stream_chunks = max(1, int(data["stream_chunks"]))
        if "violation_rate" in data:
            self.violation_rate = min(1.0, max(0.0, float(data["violation_rate"])))
        for name in ("valid_content", "invalid_content"):
            if isinstance(data.get(name), str):
                setattr(self, name, data[name])
        if data.get("reset"):
            self.completions = self.violations = 0

    def next_content(self) -> str:
        self.completions += 1
        # Error diffusion instead of random draws: exactly floor(n * rate) of the first n
        # completions violate, so the rate holds for any n and the result carries no sampling
        # noise (a random draw at p = 0.2 over 1000 calls wanders by +-0.02 calls per answer).
        due = math.floor(self.completions * self.violation_rate + 1e-9)
        if due > self.violations:
            self.violations += 1
            return self.invalid_content
        return self.valid_content

    def stats(self) -> dict[str, Any]:
        return {"completions": self.completions, "violations": self.violations,
                "latency_s": self.latency_s, "violation_rate": self.violation_rate,
                "stream_chunks": self.stream_chunks}


def _response(status: int, body: bytes, *, close: bool = False) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n")
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + body


def completion_body(request: bytes, content: str) -> bytes:
    try:
        model = json.loads(request).get("model", "mock")
    except (ValueError, AttributeError):
        model = "mock"
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": content}}],
        # Real servers (vLLM) report usage; without it the gateway would count tokens itself.
        "usage": {"prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48},
    }).encode()


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream_events(content: str, pieces: int) -> list[bytes]:
    """`content` as `pieces` chat.completion.chunk events, the last one carrying usage (as
    vLLM does with stream_options.include_usage), each a chunk of a chunked HTTP body."""
    size = max(1, -(-len(content) // pieces))
    parts = [content[i:i + size] for i in range(0, len(content), size)]
    events = []
    for n, part in enumerate(parts):
        last = n == len(parts) - 1
        event: dict[str, Any] = {
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "mock",
            "choices": [{"index": 0, "delta": {"content": part},
                         "finish_reason": "stop" if last else None}]}
        data = b"data: " + json.dumps(event).encode() + b"\n\n"
        if last:
            usage = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "mock",
                     "choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 8,
                                              "total_tokens": 48}}
            data += b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"
        events.append(_chunk(data))
    events[-1] += b"0\r\n\r\n"
    return events


class MockProtocol(asyncio.Protocol):
    """One connection: requests arrive one at a time (no client here pipelines)."""

    def __init__(self, state: MockState) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self.transport.close()
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, path = ([*lines[0].split(" "), "", ""])[:2]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            length = int(headers.get("content-length") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            self.handle(method, path.split("?")[0], body, headers.get("connection") == "close")

    def _send(self, payload: bytes, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(payload)
        if close:
            self.transport.close()

    def stream(self, content: str, close: bool) -> None:
        events = stream_events(content, self.state.stream_chunks)
        self._send(STREAM_HEAD, False)
        step = self.state.latency_s / len(events)
        for n, event in enumerate(events):
            last = n == len(events) - 1
            if step > 0:
                self.loop.call_later(step * (n + 1), self._send, event, close and last)
            else:
                self._send(event, close and last)

    def handle(self, method: str, path: str, body: bytes, close: bool) -> None:
        state = self.state
        if method == "POST" and path.endswith("/chat/completions"):
            if b'"stream": true' in body or b'"stream":true' in body:
                self.stream(state.next_content(), close)
                return
            payload = _response(200, completion_body(body, state.next_content()), close=close)
            if state.latency_s > 0:
                self.loop.call_later(state.latency_s, self._send, payload, close)
            else:
                self._send(payload, close)
            return
        if method == "GET" and path in ("/_stats", "/health", "/v1/health"):
            self._send(_response(200, json.dumps(state.stats()).encode(), close=close), close)
        elif method == "POST" and path == "/_control":
            try:
                state.configure(json.loads(body or b"{}"))
            except (ValueError, TypeError, AttributeError):
                self._send(_response(400, b'{"error": "bad control body"}', close=close), close)
                return
            self._send(_response(200, json.dumps(state.stats()).encode(), close=close), close)
        elif method == "GET" and path.endswith("/models"):
            self._send(_response(200, b'{"object": "list", "data": [{"id": "mock", '
                                      b'"object": "model"}]}', close=close), close)
        else:
            self._send(_response(404, b'{"error": "not found"}', close=close), close)


async def serve(host: str, port: int, state: MockState | None = None,
                ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    state = state or MockState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MockProtocol(state), host, port, backlog=2048)
    if ready is not None:
        ready.set()
    async with server:
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--violation-rate", type=float, default=0.0)
    args = parser.parse_args()
    state = MockState(latency_s=args.latency, violation_rate=args.violation_rate)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(f"mock listening on {args.host}:{args.port} pid {os.getpid()}", flush=True)
    runner(serve(args.host, args.port, state))


if __name__ == "__main__":
    main()
