"""Eval reports written to a directory: report.json, report.md and report.html."""

from __future__ import annotations

import json
from pathlib import Path

from featurelm.evals.results import SuiteResult, to_json


def write_reports(suite: SuiteResult, directory: Path) -> list[Path]:
    """Write the three reports; returns their paths."""
    from featurelm.evals.reports import (  # matplotlib loads only when a report is asked for
        html,
        markdown,
    )

    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "report.json": json.dumps(to_json(suite), indent=2, ensure_ascii=False) + "\n",
        "report.md": markdown.render(suite),
        "report.html": html.render(suite),
    }
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
