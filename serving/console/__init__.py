"""The web console at /console/: server-rendered pages over the engine's public API, with the
HTTP API's own authorization (docs/console.md)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from featurelm.serving.console import evals, features, pages
from featurelm.serving.console.eval_runs import EvalRuns
from featurelm.serving.console.sessions import Sessions

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount the console's pages and its vendored static files on `app`."""
    app.state.console_sessions = Sessions()
    app.state.console_evals = EvalRuns()
    app.include_router(pages.router)
    app.include_router(features.router)
    app.include_router(evals.router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")


async def aclose(app: FastAPI) -> None:
    """Stop the console's eval runs in progress (before the engine they call closes)."""
    runs: EvalRuns = app.state.console_evals
    await runs.aclose()
