"""`featurelm serve --workers N`: N processes share the port, each serves calls, and SIGTERM to
the supervisor drains and stops them all; the open-files limit is lifted for many sockets."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from featurelm.serving.server import raise_open_files
from tests.conftest import SENTIMENT, free_port, scripted
from tests.serving.conftest import write_project

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def test_workers_share_the_port_and_stop_together_on_sigterm(tmp_path: Path) -> None:
    config = write_project(tmp_path, features=[SENTIMENT],
                           backends={"primary": scripted('{"sentiment": "positive"}')},
                           routes={"default": {"backends": ["primary"]}}, auth="off",
                           http={"rate_limit_per_minute": 0, "drain_s": 0.2})
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "featurelm.cli", "--config", str(config), "serve",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:
            assert process.poll() is None, log.read_text()
            workers = children(process.pid)
            time.sleep(0.1)
        assert len(workers) == 2, log.read_text()
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        before = {pid: cpu_seconds(pid) for pid in workers}
        # A new connection per call: the kernel spreads connections across the workers.
        answers = [httpx.post(url + "/v1/features/sentiment",
                              json={"input": {"text": f"call {i}"}}, timeout=10).status_code
                   for i in range(200)]
        assert answers == [200] * 200
        assert all(cpu_seconds(pid) > before[pid] for pid in workers)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
        assert not any(Path(f"/proc/{pid}").exists() and "zombie" not in
                       Path(f"/proc/{pid}/status").read_text() for pid in workers)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_bad_worker_count_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "featurelm.cli", "serve", "--workers", "0"],
                         capture_output=True, text=True, cwd=tmp_path, check=False)
    assert run.returncode == 2 and "'0' is not a positive whole number" in run.stderr
    assert "Traceback" not in run.stderr


def test_the_open_files_limit_is_raised_toward_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        limit = raise_open_files(4096)
        assert limit == min(4096, hard) and limit > 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
