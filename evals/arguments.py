"""The `featurelm eval` options, kept apart from the eval machinery so `--help` loads none of it."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("features", nargs="*", metavar="FEATURE",
                        help="features to evaluate (default: every feature with a dataset)")
    parser.add_argument("--tenant", help="evaluate as this tenant, with its active overrides")
    parser.add_argument("--route", help="run every feature on this route instead of its own")
    parser.add_argument("--repeat", type=_positive, default=1, metavar="K",
                        help="run each case K times; it passes only if it passes every time")
    parser.add_argument("--concurrency", type=_positive, default=4, metavar="N",
                        help="feature calls in flight at once (default 4)")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="write report.json, report.md and report.html to DIR")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="compare two runs: report.json files, or 'base', 'tenant:NAME', "
                             "'route:NAME' run now")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--record", type=Path, metavar="DIR",
                      help="save every backend exchange as cassettes in DIR")
    mode.add_argument("--replay", type=Path, metavar="DIR",
                      help="answer from the cassettes in DIR, never calling a backend")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
