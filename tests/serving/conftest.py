"""Serving fixtures: in-process clients over ASGITransport, and real `featurelm serve` processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from featurelm.engine import Engine
from featurelm.engine.store import Store
from featurelm.serving.app import create_app
from tests.conftest import SENTIMENT, ProjectFactory, free_port, scripted

REPO = Path(__file__).resolve().parents[2]


def feature(name: str, route: str = "default", **model: Any) -> dict[str, Any]:
    """The sentiment contract under another name, on another route."""
    return {**SENTIMENT, "name": name, "model": {**SENTIMENT["model"], "route": route, **model}}


@dataclass
class Keys:
    admin: str
    tenants: dict[str, str] = field(default_factory=dict)

    def bearer(self, who: str) -> dict[str, str]:
        key = self.admin if who == "admin" else self.tenants[who]
        return {"Authorization": f"Bearer {key}"}


async def make_keys(store_url: str, tenants: list[str]) -> Keys:
    store = await Store.connect(store_url)
    try:
        keys = Keys(admin=await store.create_admin_key(actor="test"))
        for name in tenants:
            keys.tenants[name] = (await store.create_tenant(name, actor="test"))[1]
        return keys
    finally:
        await store.aclose()


@dataclass
class Client:
    """An in-process client, its engine and the keys of its tenants."""

    http: httpx.AsyncClient
    engine: Engine
    keys: Keys


ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client(make_project: ProjectFactory) -> AsyncIterator[ClientFactory]:
    """Build an app on a temp project (auth required unless `extra` says otherwise)."""
    opened: list[Client] = []

    async def make(*, tenants: tuple[str, ...] = ("acme", "globex"), **project: Any) -> Client:
        config = make_project(**project)
        engine = Engine.from_config(config)
        transport = httpx.ASGITransport(app=create_app(engine), raise_app_exceptions=False)
        http = httpx.AsyncClient(transport=transport, base_url="http://test")
        keys = await make_keys(engine.config.store, list(tenants))
        opened.append(Client(http, engine, keys))
        return opened[-1]

    yield make
    for client in opened:
        await client.http.aclose()
        await client.engine.aclose()


# -- real server processes ---------------------------------------------------------------------

def write_project(root: Path, features: list[dict[str, Any]], backends: dict[str, Any],
                  routes: dict[str, Any], **extra: Any) -> Path:
    (root / "features").mkdir(parents=True, exist_ok=True)
    (root / "prompts").mkdir(exist_ok=True)
    for f in features:
        (root / "features" / f"{f['name']}.yaml").write_text(yaml.safe_dump(f, sort_keys=False))
    config = {"backends": backends, "routes": routes, "cache": "memory",
              "store": f"sqlite:///{root / 'featurelm.db'}", **extra}
    path = root / "featurelm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    keys: Keys

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(config: Path, tenants: list[str]) -> LiveServer:
    """`featurelm serve` in a subprocess on a free loopback port, once /healthz answers."""
    store_url = yaml.safe_load(config.read_text())["store"]
    keys = asyncio.run(make_keys(store_url, tenants))
    port = free_port()
    log = config.parent / "server.log"
    env = dict(os.environ)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "featurelm.cli", "--config", str(config), "serve",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=config.parent)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log, keys)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.logs()}")
        try:
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server did not start:\n{server.logs()}")


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server for the endpoint, error and schemathesis tests (auth required)."""
    root = tmp_path_factory.mktemp("api")
    config = write_project(
        root,
        features=[SENTIMENT, feature("broken", "broken", max_attempts=1),
                  feature("hanging", "hanging"), feature("tiny", "tiny")],
        backends={"primary": scripted('{"sentiment": "positive"}'),
                  "garbage": scripted("no json here"),
                  "stuck": {"kind": "scripted", "options": {"replies": ["{}"], "delay": 5}},
                  "small": {**scripted('{"sentiment": "neutral"}'), "context_window": 256}},
        routes={"default": {"backends": ["primary"]}, "broken": {"backends": ["garbage"]},
                "hanging": {"backends": ["stuck"], "retries": 0},
                "tiny": {"backends": ["small"]}},
        auth="required",
        limits={"request_timeout_s": 0.5},
        http={"max_body_bytes": 16384, "rate_limit_per_minute": 100_000, "drain_s": 0.1})
    server = start_server(config, ["acme", "globex"])
    yield server
    server.stop()
