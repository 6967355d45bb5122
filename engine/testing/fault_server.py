"""A fault-injecting OpenAI-compatible HTTP server on loopback, for reliability tests and demos.

It answers `/v1/chat/completions` (plain and streaming), `/v1/models` and `/health`, records
every request body it receives, and follows a fault plan: an explicit sequence of faults
(429 with Retry-After, 5xx, connection reset, hang, malformed JSON, schema-violating content)
consumed first, then faults drawn at configured rates. Run it standalone with
`python -m engine.testing.fault_server --port 8001 --rate 500=0.1 --rate reset=0.05`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import h11

FaultKind = Literal["ok", "status", "reset", "hang", "malformed", "schema_violation"]
ReplyFunction = Callable[[dict[str, Any]], str]

#: Content that breaks any object schema with required fields or additionalProperties: false.
SCHEMA_VIOLATION = '{"__fault__": "schema_violation"}'
MALFORMED_BODY = '{"id": "chatcmpl-broken", "choices": [{"message": {"content": '


@dataclass(frozen=True)
class Fault:
    """What the server does with one chat-completion request."""

    kind: FaultKind = "ok"
    status: int = 500
    #: Retry-After header value (seconds or an HTTP-date), sent with `status` faults.
    retry_after: str | None = None
    body: str | None = None
    #: Seconds to wait before acting, on top of the server's latency.
    delay: float = 0.0

    @classmethod
    def ok(cls, delay: float = 0.0) -> Fault:
        return cls("ok", delay=delay)

    @classmethod
    def error(cls, status: int = 500, body: str | None = None,
              retry_after: str | float | None = None) -> Fault:
        return cls("status", status=status, body=body,
                   retry_after=None if retry_after is None else str(retry_after))

    @classmethod
    def rate_limited(cls, retry_after: str | float = 1) -> Fault:
        return cls.error(429, retry_after=retry_after)

    @classmethod
    def context_length(cls) -> Fault:
        message = ("This model's maximum context length is 2048 tokens. However, you requested "
                   "4096 tokens. Please reduce the length of the messages.")
        return cls.error(400, body=json.dumps({"error": {
            "message": message, "type": "invalid_request_error", "code": "context_length_exceeded"
        }}))

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def hang(cls) -> Fault:
        return cls("hang")

    @classmethod
    def malformed(cls) -> Fault:
        return cls("malformed")

    @classmethod
    def schema_violation(cls) -> Fault:
        return cls("schema_violation")


@dataclass
class FaultPlan:
    """Faults for successive requests: `sequence` first, then drawn from `rates`, else ok."""

    sequence: list[Fault] = field(default_factory=list)
    #: (probability, fault) pairs; probabilities are checked in order and should sum to <= 1.
    rates: list[tuple[float, Fault]] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def next_fault(self) -> Fault:
        with self._lock:
            if self.sequence:
                return self.sequence.pop(0)
            draw = self._random.random()
            for probability, fault in self.rates:
                if draw < probability:
                    return fault
                draw -= probability
            return Fault.ok()

    def extend(self, faults: Sequence[Fault]) -> None:
        with self._lock:
            self.sequence.extend(faults)


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: Mapping[str, str]
    body: Any


def request_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The JSON Schema a chat request asks for, in whichever dialect it was sent."""
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping):
        if isinstance(fmt.get("json_schema"), Mapping):
            schema = fmt["json_schema"].get("schema")
            return schema if isinstance(schema, Mapping) else None
        if isinstance(fmt.get("schema"), Mapping):
            return fmt["schema"]  # type: ignore[no-any-return]
    structured = body.get("structured_outputs")
    if isinstance(structured, Mapping) and isinstance(structured.get("json"), Mapping):
        return structured["json"]  # type: ignore[no-any-return]
    return None


def example_instance(schema: Mapping[str, Any]) -> Any:
    """A small value satisfying common JSON Schema shapes (const, enum, types, required)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_instance(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: example_instance(properties.get(name, {}))
                for name in schema.get("required", list(properties))}
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        return [example_instance(items) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    return {"boolean": False, "null": None}.get(kind)


def default_reply(body: dict[str, Any]) -> str:
    schema = request_schema(body)
    return json.dumps(example_instance(schema)) if schema is not None else "ok"


class FaultServer:
    """Serve until stopped, in a background thread (`with FaultServer() as s:`) or foreground."""

    def __init__(self, plan: FaultPlan | None = None, *, reply: ReplyFunction | None = None,
                 latency: float = 0.0, model: str = "fault-model", include_usage: bool = True,
                 host: str = "127.0.0.1", port: int = 0, ignore_stream: bool = False):
        self.plan = plan or FaultPlan()
        #: Answer `stream: true` with one plain JSON completion, as some servers do.
        self.ignore_stream = ignore_stream
        self.reply = reply or default_reply
        self.latency = latency
        self.model = model
        self.include_usage = include_usage
        self.host = host
        self.port = port
        self.received: list[ReceivedRequest] = []
        #: TCP connections accepted so far (keep-alive clients reuse theirs).
        self.connections = 0
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._startup_error: BaseException | None = None

    # -- inspection ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL in the OpenAI convention (ends in /v1)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def bodies(self) -> list[Any]:
        """Bodies of the chat-completion requests received so far, in order."""
        return [r.body for r in self.received if r.path.endswith("/chat/completions")]

    @property
    def completions(self) -> int:
        return len(self.bodies)

    def script(self, *faults: Fault) -> None:
        """Queue faults for the next requests (after any already queued)."""
        self.plan.extend(faults)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._run_thread, name="fault-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault server did not start within 10 s")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run_thread(self) -> None:
        asyncio.run(self.serve())

    async def serve(self) -> None:
        """Serve in the running loop until `stop()` is called."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            server = await asyncio.start_server(self._handle, self.host, self.port, backlog=1024)
        except OSError as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopped.wait()
            server.close()
            # Hanging handlers would otherwise keep the server (and its loop) alive.
            for task in list(self._handlers):
                task.cancel()

    # -- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    return
                keep = await self._respond(conn, reader, writer, request, body)
                if not keep or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if not writer.is_closing():
                writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader
                            ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return None, b""
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None, b""

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int,
                    body: bytes, content_type: str = "application/json",
                    extra: Sequence[tuple[str, str]] = ()) -> None:
        headers = [("content-type", content_type), ("content-length", str(len(body))), *extra]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _respond(self, conn: h11.Connection, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, request: h11.Request, raw: bytes) -> bool:
        method = request.method.decode()
        path = request.target.decode().split("?", 1)[0]
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.received.append(ReceivedRequest(method, path, headers, body))
        if method == "GET" and path == "/health":
            await self._send(conn, writer, 200, b'{"status": "ok"}')
        elif method == "GET" and path == "/v1/models":
            models = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            await self._send(conn, writer, 200, json.dumps(models).encode())
        elif method == "POST" and path == "/v1/chat/completions" and isinstance(body, dict):
            return await self._complete(conn, reader, writer, body)
        elif method == "POST" and path == "/v1/chat/completions":
            await self._send(conn, writer, 400, b'{"error": {"message": "body must be JSON"}}')
        else:
            await self._send(conn, writer, 404, b'{"error": {"message": "not found"}}')
        return True

    async def _complete(self, conn: h11.Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
        fault = self.plan.next_fault()
        if self.latency or fault.delay:
            await asyncio.sleep(self.latency + fault.delay)
        if fault.kind == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # Linger 0 makes close() send RST instead of FIN: a real connection reset.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
            writer.transport.abort()
            return False
        if fault.kind == "hang":
            while await reader.read(65536):
                pass  # hold the request open until the client gives up
            return False
        if fault.kind == "status":
            payload = fault.body or json.dumps({"error": {
                "message": f"injected fault {fault.status}", "type": "server_error"}})
            extra = [("retry-after", fault.retry_after)] if fault.retry_after else []
            await self._send(conn, writer, fault.status, payload.encode(), extra=extra)
            return True
        if fault.kind == "malformed":
            await self._send(conn, writer, 200, MALFORMED_BODY.encode())
            return True
        text = SCHEMA_VIOLATION if fault.kind == "schema_violation" else self.reply(body)
        if body.get("stream") and not self.ignore_stream:
            await self._stream(conn, writer, text, body)
        else:
            await self._send(conn, writer, 200, json.dumps(self._completion(body, text)).encode())
        return True

    def _usage(self, body: Mapping[str, Any], text: str) -> dict[str, int]:
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        usage = {"prompt_tokens": prompt // 4 + 1, "completion_tokens": len(text) // 4 + 1}
        return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}

    def _completion(self, body: Mapping[str, Any], text: str) -> dict[str, Any]:
        result: dict[str, Any] = {
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion",
            "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
        }
        if self.include_usage:
            result["usage"] = self._usage(body, text)
        return result

    async def _stream(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                      text: str, body: Mapping[str, Any]) -> None:
        # No content-length: h11 sends the body chunked, as SSE servers do.
        writer.write(conn.send(h11.Response(status_code=200, headers=[
            ("content-type", "text/event-stream"), ("cache-control", "no-cache")])))
        ident = f"chatcmpl-{next(self._ids)}"

        def event(delta: dict[str, str], finish: str | None = None) -> bytes:
            chunk = {"id": ident, "object": "chat.completion.chunk", "model": self.model,
                     "created": int(time.time()),
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        pieces = [event({"role": "assistant", "content": ""})]
        pieces += [event({"content": text[i:i + 8]}) for i in range(0, len(text), 8)]
        pieces += [event({}, "stop")]
        options = body.get("stream_options")
        if self.include_usage and isinstance(options, Mapping) and options.get("include_usage"):
            # As OpenAI and vLLM do: one last chunk with no choices and the call's usage.
            chunk = {"id": ident, "object": "chat.completion.chunk", "model": self.model,
                     "created": int(time.time()), "choices": [],
                     "usage": self._usage(body, text)}
            pieces.append(f"data: {json.dumps(chunk)}\n\n".encode())
        pieces.append(b"data: [DONE]\n\n")
        for piece in pieces:
            writer.write(conn.send(h11.Data(data=piece)))
            await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()


_RATE_FAULTS: dict[str, Callable[[float], Fault]] = {
    "429": lambda retry_after: Fault.rate_limited(retry_after),
    "500": lambda _: Fault.error(500),
    "502": lambda _: Fault.error(502),
    "503": lambda retry_after: Fault.error(503, retry_after=retry_after),
    "reset": lambda _: Fault.reset(),
    "hang": lambda _: Fault.hang(),
    "malformed": lambda _: Fault.malformed(),
    "schema_violation": lambda _: Fault.schema_violation(),
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per completion")
    parser.add_argument("--model", default="fault-model")
    parser.add_argument("--rate", action="append", default=[], metavar="FAULT=P",
                        help=f"inject FAULT with probability P; FAULT in {sorted(_RATE_FAULTS)}")
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    rates = []
    for spec in args.rate:
        name, _, probability = spec.partition("=")
        if name not in _RATE_FAULTS or not probability:
            parser.error(f"--rate {spec!r}: expected FAULT=P with FAULT in {sorted(_RATE_FAULTS)}")
        rates.append((float(probability), _RATE_FAULTS[name](args.retry_after)))
    server = FaultServer(FaultPlan(rates=rates, seed=args.seed), latency=args.latency,
                         model=args.model, host=args.host, port=args.port)
    print(f"fault server on http://{args.host}:{args.port}/v1", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve())


if __name__ == "__main__":
    main()
