"""Processes of a bench run: free loopback ports, core pinning, readiness polling, RSS, cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass(frozen=True)
class Cores:
    """The same placement for every variant: mock and client share one core, the gateway
    under test gets the other (on a 1-core machine everything shares core 0)."""

    mock: int
    gateway: int
    client: int
    #: Every core this run may use (for the row that spreads featurelm over all of them).
    every: frozenset[int] = frozenset()

    @classmethod
    def pick(cls) -> Cores:
        cores = sorted(os.sched_getaffinity(0))
        first, second = cores[0], cores[1 % len(cores)]
        return cls(mock=first, gateway=second, client=first, every=frozenset(cores))


def pin_self(core: int) -> None:
    os.sched_setaffinity(0, {core})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """A child process pinned to one core, its output in a log file, stopped on exit."""

    def __init__(self, name: str, argv: Sequence[str], *, core: int | frozenset[int],
                 log_dir: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.started = time.perf_counter()
        cores = {core} if isinstance(core, int) else set(core)
        # Pinned before exec, so every thread the child ever starts stays on its core.
        self.popen = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
            env={**os.environ, **(env or {})}, start_new_session=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cores))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, chars: int = 2000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, url: str, timeout_s: float = 60.0, interval_s: float = 0.01) -> float:
        """Poll `url` until it answers 200; the seconds from spawn to ready."""
        deadline = time.perf_counter() + timeout_s
        with httpx.Client(timeout=1.0) as client:
            while time.perf_counter() < deadline:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n"
                                       f"{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return time.perf_counter() - self.started
                time.sleep(interval_s)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def rss_mib(self) -> float:
        """Resident memory of the process and its children (uvicorn may fork workers)."""
        total = 0
        for pid in [self.pid, *_children(self.pid)]:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total / 1024

    def stop(self) -> None:
        if self.popen.poll() is None:
            # The child leads its own session: signal its whole group (uvicorn workers too).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            for child in map(int, text):
                found += [child, *_children(child)]
    return found


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.stop()
