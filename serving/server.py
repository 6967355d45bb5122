"""Runs the HTTP service with uvicorn, with JSON logs and a graceful, draining shutdown.

On SIGTERM, /readyz turns 503 at once while the server keeps serving for `http.drain_s`
(so a load balancer stops sending new requests), then uvicorn stops accepting connections
and gives in-flight requests `http.shutdown_grace_s` to finish before exiting. With
`workers` > 1, that many such processes share the port (SO_REUSEPORT), under a supervisor
that forwards signals to them.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType

import uvicorn

from featurelm.engine import Engine
from featurelm.serving.app import create_app
from featurelm.serving.connections import http_protocol
from featurelm.serving.logs import setup_logging
from featurelm.serving.state import Lifecycle

log = logging.getLogger("featurelm.serving")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_s: float,
                 engine: Engine | None = None) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_s = drain_s
        self.engine = engine
        #: True when a dependency needed at start (the store) failed: the process exits 1.
        self.failed = False
        self._stop_at: float | None = None
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: set flags only (logging here could deadlock on its lock).
        if sig == signal.SIGTERM and not self.lifecycle.draining:
            self.lifecycle.draining = True
            self._stop_at = time.monotonic() + self.drain_s
            return
        self.lifecycle.draining = True
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.engine is not None:
            # Connected here, before the app's lifespan, so a store that cannot be reached is
            # one log line and exit status 1, not the lifespan's multi-line traceback.
            try:
                await self.engine.start()
            except Exception as exc:
                log.error("cannot start: %s", " ".join(str(exc).split())[:500] or
                          type(exc).__name__)
                self.failed = self.should_exit = True
                await self.engine.aclose()
                return
        await super().startup(sockets)
        tune_gc()

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None:
            if not self._announced:
                self._announced = True
                log.info("SIGTERM: draining (readiness fails) for %.1fs, then finishing "
                         "in-flight requests", self.drain_s)
            if time.monotonic() >= self._stop_at:
                self.should_exit = True
        return await super().on_tick(counter)


#: Net allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 100_000


def tune_gc() -> None:
    """Call once startup is done: freeze what imports and startup built, so the collector
    stops scanning it, and collect the young generation less often.

    The objects of requests in flight (tens of them, each waiting on a model for tens of
    milliseconds) outlive two young collections and reach the oldest generation, so full
    collections ran often, and each walked every object the imports made: about a third of
    the CPU under load. Frozen objects are never collected; startup garbage is collected
    first. With a thousand calls in flight, each young collection walks the objects of every
    call in flight: at 10,000 allocations the collector took 16% of the CPU at 1,024 in
    flight (1% at 64), at 100,000 under 1%. Only garbage that holds a reference cycle waits
    for a collection; the rest is freed at once, so the larger young generation costs little
    memory (bench rows 9, memory per call in flight)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


#: Pending connections the kernel queues before the server accepts them (capped by
#: net.core.somaxconn): a burst of thousands of clients connecting at once must not overflow
#: it, or the overflow waits a second for the SYN to be retried.
BACKLOG = 4096
#: Open files (sockets) wanted: every call in flight holds a client connection and one to a
#: backend, and 1024, a common default, caps a replica at about 500 calls in flight.
OPEN_FILES = 65536


def raise_open_files(wanted: int = OPEN_FILES) -> int:
    """Lift the soft open-files limit toward the hard one (as Go's runtime does); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def serve(*, config: str | None, host: str, port: int,
          prepare: Callable[[Engine], None] | None = None, workers: int = 1) -> int:
    """Serve until SIGTERM; `prepare` adds what serving itself may not import (the eval gate).

    One process runs on one core; `workers` > 1 forks that many, each with its own engine,
    sharing the port."""
    if workers > 1:
        return supervise(workers, lambda: _serve(config, host, port, prepare, reuse_port=True))
    return _serve(config, host, port, prepare, reuse_port=False)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket other workers can bind too: the kernel spreads new connections
    across them by hash, so each worker gets an even share and accepts without a lock."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def supervise(workers: int, run: Callable[[], int]) -> int:
    """Fork `workers` processes that each `run()`, forward SIGTERM and SIGINT to them, and
    wait. A worker that fails stops the others: the exit status is its, and the process
    manager (Kubernetes, systemd) restarts the whole set."""
    setup_logging()
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            code = 1
            try:
                code = run()
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    log.info("serving with %d worker processes: %s", workers, " ".join(map(str, children)))

    def forward(sig: int, frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status, running = 0, set(children)
    while running:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break
        running.discard(pid)
        code = os.waitstatus_to_exitcode(raw)
        if code != 0 and not status:
            status = code if code > 0 else 1
            if running:
                log.error("worker %d exited with %d: stopping the others", pid, code)
                forward(signal.SIGTERM, None)
    return status


def _serve(config: str | None, host: str, port: int,
           prepare: Callable[[Engine], None] | None, *, reuse_port: bool) -> int:
    setup_logging()
    raise_open_files()
    engine = Engine.from_config(config)
    if prepare is not None:
        prepare(engine)
    lifecycle = Lifecycle()
    http = engine.config.http
    uv_config = uvicorn.Config(create_app(engine, lifecycle=lifecycle), host=host, port=port,
                               log_config=None, access_log=False, server_header=False,
                               ws="none",  # no WebSocket endpoints: skip loading a library
                               http=http_protocol(http.header_timeout_s),
                               backlog=BACKLOG,
                               timeout_graceful_shutdown=int(max(1, http.shutdown_grace_s)))
    server = DrainingServer(uv_config, lifecycle, http.drain_s, engine)
    server.run(sockets=[_listen(host, port)] if reuse_port else None)
    return 1 if server.failed else 0
