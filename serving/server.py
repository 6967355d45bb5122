"""Runs the HTTP service with uvicorn, with JSON logs and a graceful, draining shutdown.

On SIGTERM, /readyz turns 503 at once while the server keeps serving for `http.drain_s`
(so a load balancer stops sending new requests), then uvicorn stops accepting connections
and gives in-flight requests `http.shutdown_grace_s` to finish before exiting.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from featurelm.engine import Engine
from featurelm.serving.app import create_app
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


#: Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Call once startup is done: freeze what imports and startup built, so the collector
    stops scanning it, and collect the young generation less often.

    The objects of requests in flight (tens of them, each waiting on a model for tens of
    milliseconds) outlive two young collections and reach the oldest generation, so full
    collections ran often, and each walked every object the imports made: about a third of
    the CPU under load. Frozen objects are never collected; startup garbage is collected
    first. A larger young generation costs at most a few MiB."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def serve(*, config: str | None, host: str, port: int,
          prepare: Callable[[Engine], None] | None = None) -> int:
    """Serve until SIGTERM; `prepare` adds what serving itself may not import (the eval gate)."""
    setup_logging()
    engine = Engine.from_config(config)
    if prepare is not None:
        prepare(engine)
    lifecycle = Lifecycle()
    http = engine.config.http
    uv_config = uvicorn.Config(create_app(engine, lifecycle=lifecycle), host=host, port=port,
                               log_config=None, access_log=False, server_header=False,
                               ws="none",  # no WebSocket endpoints: skip loading a library
                               timeout_graceful_shutdown=int(max(1, http.shutdown_grace_s)))
    server = DrainingServer(uv_config, lifecycle, http.drain_s, engine)
    server.run()
    return 1 if server.failed else 0
