"""Starts what a bench run measures: the mock, featurelm servers, the LiteLLM proxy, pinned."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import litellm_venv
from bench.client import Connection
from bench.procs import Cores, Proc, free_port
from bench.project import write_featurelm_project, write_litellm_config

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def featurelm_argv(config: Path, port: int | str) -> list[str]:
    script = Path(PYTHON).parent / "featurelm"
    command = [str(script)] if script.exists() else [PYTHON, "-m", "featurelm.cli"]
    return [*command, "--config", str(config), "serve", "--host", "127.0.0.1",
            "--port", str(port)]


@dataclass
class Server:
    proc: Proc
    url: str
    ready_s: float
    rss_mib: float


@dataclass
class Harness:
    cores: Cores = field(default_factory=Cores.pick)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="featurelm-bench-")))
    procs: list[Proc] = field(default_factory=list)
    mock_url: str = ""

    def start(self, name: str, argv: list[str], ready_path: str, *, core: int | frozenset[int],
              env: dict[str, str] | None = None, timeout_s: float = 90.0) -> Server:
        port = free_port()
        argv = [a.replace("{port}", str(port)) for a in argv]
        proc = Proc(name, argv, core=core, log_dir=self.root, env=env, cwd=REPO)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        ready_s = proc.wait_ready(url + ready_path, timeout_s=timeout_s)
        return Server(proc, url, ready_s, proc.rss_mib())

    def start_mock(self) -> Server:
        server = self.start("mock", [PYTHON, "-m", "bench.mock", "--port", "{port}"],
                            "/_stats", core=self.cores.mock)
        self.mock_url = server.url
        return server

    def start_featurelm(self, name: str, *, cache: str = "none", key_prefix: str = "featurelm:",
                        core: int | frozenset[int] | None = None,
                        extra: dict[str, Any] | None = None, workers: int = 1) -> Server:
        config = write_featurelm_project(self.root, mock_url=self.mock_url, cache=cache,
                                         key_prefix=key_prefix, name=name, extra=extra)
        argv = featurelm_argv(config, "{port}") + (["--workers", str(workers)]
                                                   if workers > 1 else [])
        return self.start(name, argv, "/readyz",
                          core=self.cores.gateway if core is None else core)

    def start_litellm(self, bin_dir: Path) -> Server:
        config = write_litellm_config(self.root, mock_url=self.mock_url)
        argv = [str(bin_dir / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                "--port", "{port}", "--num_workers", "1"]
        return self.start("litellm", argv, "/health/liveliness", core=self.cores.gateway,
                          env=litellm_venv.ENV, timeout_s=180.0)

    async def mock_control(self, **settings: Any) -> dict[str, Any]:
        conn = Connection(self.mock_url)
        try:
            status, stats = await conn.post_json("/_control", settings)
        finally:
            await conn.close()
        if status != 200:
            raise RuntimeError(f"mock control failed: {status}")
        return dict(stats)

    async def mock_completions(self) -> int:
        return int((await self.mock_control())["completions"])

    def stop(self, server: Server) -> None:
        server.proc.stop()
        with contextlib.suppress(ValueError):
            self.procs.remove(server.proc)

    def close(self, *, keep_logs: bool = False) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if not keep_logs:
            shutil.rmtree(self.root, ignore_errors=True)
