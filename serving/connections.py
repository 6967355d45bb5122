"""uvicorn's HTTP/1.1 protocol with a header timeout: a connection that has not sent a whole
request line and headers within `http.header_timeout_s` of connecting (or of its previous
response) is closed, so slow or half-open clients (slowloris) cannot hold sockets forever.

uvicorn times out idle keep-alive connections and our middleware times out stalled bodies,
but the header phase runs inside the protocol, before any ASGI code sees the request.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.h11_impl import H11Protocol


class _HeaderDeadline:
    """Closes a connection that has waited `seconds` for a request's headers.

    Arming and disarming happen twice per request, so they only note the time; one timer per
    connection reads the note when it fires and sets itself again for the time left (a busy
    keep-alive connection costs one timer per `seconds`, not one per request)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        #: Event-loop time the wait for headers began; None while a request is in progress.
        self._since: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport) -> None:
        self._since = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._since + self.seconds, self._check, loop, transport)

    def cancel(self) -> None:
        self._since = None

    def stop(self) -> None:
        self._since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self, loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport) -> None:
        self._timer = None
        if self._since is None:
            return  # a request is in progress: the next arm() starts a timer
        due = self._since + self.seconds
        if loop.time() >= due:
            _close(transport)
        else:
            self._timer = loop.call_at(due, self._check, loop, transport)


def _close(transport: asyncio.BaseTransport) -> None:
    # Armed only while no request is in progress, so nothing is cut off mid-response.
    if not transport.is_closing():
        transport.close()


class _HeaderTimeout:
    """What both protocol classes add: the deadline, armed when a client connects and
    stopped when it goes. Each class disarms it where its parser completes the headers."""

    header_timeout_s = 10.0
    loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_deadline = _HeaderDeadline(self.header_timeout_s)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.header_deadline.arm(self.loop, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.header_deadline.stop()
        super().connection_lost(exc)  # type: ignore[misc]


class H11HeaderTimeout(_HeaderTimeout, H11Protocol):
    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a Request event arrived: its headers are complete
            self.header_deadline.cancel()

    def on_response_complete(self) -> None:
        # Armed first: the call below starts a pipelined request if one is buffered, and
        # handle_events then cancels the timer again.
        if not self.transport.is_closing():
            self.header_deadline.arm(self.loop, self.transport)
        super().on_response_complete()


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional: uvicorn falls back to h11 without it
        return None

    class HttpToolsHeaderTimeout(_HeaderTimeout, HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            self.header_deadline.cancel()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            # A queued pipelined request already has its headers: only an empty queue waits.
            if not self.pipeline and not self.transport.is_closing():
                self.header_deadline.arm(self.loop, self.transport)
            super().on_response_complete()

    return HttpToolsHeaderTimeout


def http_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol class for `uvicorn.Config(http=...)`: httptools where installed (as
    uvicorn's "auto" picks), else h11, with the header timeout set."""
    base = _httptools_protocol() or H11HeaderTimeout
    return cast(type[asyncio.Protocol],
                type(base.__name__, (base,), {"header_timeout_s": header_timeout_s}))
