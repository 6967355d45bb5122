"""The bench's one table: each row a ratio measured side by side, its target and verdict."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    key: str
    what: str
    target: str
    value: float | None = None
    passed: bool | None = None
    #: The measurements behind the ratio (absolute numbers, for context only), or why the
    #: row could not run.
    detail: str = ""
    fmt: str = "{:.2f}"

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "not available"
        return "pass" if self.passed else "MISS"

    @property
    def shown(self) -> str:
        return "-" if self.value is None else self.fmt.format(self.value)


def ratio_row(key: str, what: str, target: str, value: float | None,
              ok: Callable[[float], bool], detail: str, fmt: str = "{:.2f}") -> Row:
    return Row(key, what, target, value, None if value is None else ok(value), detail, fmt)


def unavailable(key: str, what: str, target: str, reason: str) -> Row:
    return Row(key, what, target, None, None, f"not available: {reason}")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: a busy machine explains a noisy run."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def render(rows: Sequence[Row], *, header: Sequence[str]) -> str:
    lines = [*header, "",
             "| # | ratio | measured | target | result | details |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.key} | {row.what} | {row.shown} | {row.target} | "
                     f"{row.verdict} | {row.detail} |")
    return "\n".join(lines)


def today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
