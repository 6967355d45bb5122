"""The console's evals page in-process: runs are changes (CSRF), bounded (one at a time per
tenant and feature), scoped like the HTTP API (a tenant sees its own, the admin every tenant's),
and a broken dataset, a failing model or a shutdown mid-run are pages, never tracebacks. The
side by side of a breaking override is seen in real Chromium (test_browser.py)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from featurelm.engine import Engine
from featurelm.serving import console as console_package
from featurelm.serving.app import create_app
from featurelm.serving.console.evals import REPORT_CSP
from tests.conftest import SENTIMENT, ProjectFactory, scripted
from tests.console.test_console import Console, console_as
from tests.serving.conftest import make_keys

FEATURE = {**SENTIMENT, "overridable": ["prompt.system"],
           "evals": {"dataset": "cases.jsonl", "threshold": 0.5}}
PLAIN = {**SENTIMENT, "name": "plain", "overridable": ["prompt.system"]}
CASES = [{"id": "happy", "input": {"text": "Love it"},
          "assert": [{"type": "equals", "path": "sentiment", "value": "positive"}]},
         {"id": "angry", "input": {"text": "Hate it"},
          "assert": [{"type": "equals", "path": "sentiment", "value": "negative"}]}]
PAGE = "/console/features/sentiment/evals"


class Opened:
    def __init__(self, console: Console, app: FastAPI) -> None:
        self.console, self.app = console, app


Factory = Callable[..., Awaitable[Opened]]


@pytest.fixture
async def open_console(make_project: ProjectFactory, tmp_path: Path) -> AsyncIterator[Factory]:
    opened: list[tuple[httpx.AsyncClient, Engine]] = []

    async def make(*, auth: str = "required", delay: float = 0.0,
                   reply: str = '{"sentiment": "positive"}',
                   dataset: str | None = None) -> Opened:
        (tmp_path / "cases.jsonl").write_text(
            dataset if dataset is not None else "\n".join(json.dumps(c) for c in CASES) + "\n")
        backend = scripted(reply)
        backend["options"]["delay"] = delay
        config = make_project([FEATURE, PLAIN], backends={"p": backend},
                              routes={"default": {"backends": ["p"]}}, extra={"auth": auth})
        engine = Engine.from_config(config)
        await engine.start()
        app = create_app(engine)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://console.test")
        opened.append((http, engine))
        keys = await make_keys(engine.config.store, ["acme", "globex"])
        return Opened(Console(http, engine, keys), app)

    yield make
    for http, engine in opened:
        await http.aclose()
        await engine.aclose()


async def finished(c: Console, path: str = PAGE) -> str:
    """The run's part of the page once the run is over, polled as htmx polls it."""
    for _ in range(200):
        part = (await c.get(path.replace("/evals", "/evals/status", 1))).text
        if "hx-trigger" not in part:
            return part
        await asyncio.sleep(0.05)
    raise AssertionError("the eval run did not finish")


async def test_a_run_needs_the_csrf_token_and_a_second_one_waits_for_the_first(
        open_console: Factory) -> None:
    c = (await open_console(delay=0.2)).console
    await c.sign_in("acme")
    forged = await c.http.post(PAGE + "/run", data={"csrf": "guessed"})
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert "No eval run yet" in (await c.get(PAGE)).text

    started = await c.post(PAGE + "/run")
    assert started.status_code == 303 and started.headers["location"] == PAGE
    running = await c.get(PAGE)
    assert "Running" in running.text and 'hx-trigger="every 1s"' in running.text
    again = await c.post(PAGE + "/run")
    assert again.status_code == 409 and "already running" in again.text
    done = await finished(c)
    assert "Latest run: base only" in done and "50% · 1/2 PASS" in done
    assert "equals at sentiment" in done  # why the failing case failed


async def test_a_tenant_sees_its_own_runs_only_and_the_admin_sees_every_tenants(
        open_console: Factory) -> None:
    c = (await open_console()).console
    await c.sign_in("acme")
    await c.engine.overrides.apply("acme", "sentiment", "prompt:\n  system: Be terse.\n",
                                   author="test")
    await c.post(PAGE + "/run")
    assert "acme&#39;s override v1" in await finished(c)

    other = await console_as(c, "globex")
    assert "No eval run yet" in (await other.get(PAGE)).text
    assert "acme" not in (await other.get("/console/evals")).text
    assert (await other.get(PAGE + "?tenant=acme")).status_code == 404
    assert (await other.get(PAGE + "/status?tenant=acme")).status_code == 404
    assert (await other.get(PAGE + "/report/override.html?tenant=acme")).status_code == 404

    admin = await console_as(c, "admin")
    listed = (await admin.get("/console/evals")).text
    assert "Every tenant" in listed and "acme" in listed
    seen = await admin.get(PAGE + "?tenant=acme")
    assert seen.status_code == 200 and "acme&#39;s override v1" in seen.text
    # The admin looks at acme's run but starts runs only for the tenant it acts for.
    assert "Run the evals" not in seen.text


async def test_the_full_report_of_each_side_is_served_under_the_reports_own_policy(
        open_console: Factory) -> None:
    c = (await open_console()).console
    await c.sign_in("acme")
    assert (await c.get(PAGE + "/report/base.html")).status_code == 404  # nothing run yet
    await c.post(PAGE + "/run")
    await finished(c)
    report = await c.get(PAGE + "/report/base.html")
    assert report.status_code == 200 and "featurelm eval" in report.text
    assert report.headers["content-security-policy"] == REPORT_CSP
    assert (await c.get(PAGE + "/report/override.html")).status_code == 404  # no override
    assert (await c.get(PAGE + "/report/../../features.html")).status_code == 404


async def test_features_without_eval_cases_and_a_broken_dataset_are_said_plainly(
        open_console: Factory) -> None:
    c = (await open_console(dataset='{"id": "x", "input": \xff not json\n')).console
    await c.sign_in("acme")
    index = (await c.get("/console/evals")).text
    assert 'href="/console/features/sentiment/evals"' in index
    assert 'href="/console/features/plain/evals"' not in index
    plain = await c.get("/console/features/plain/evals")
    assert "no eval cases" in plain.text and "Run the evals" not in plain.text
    assert (await c.get("/console/features/nope/evals")).status_code == 404
    assert (await c.post("/console/features/nope/evals/run")).status_code == 404
    await c.post(PAGE + "/run")
    done = await finished(c)
    assert "Problem" in done and "invalid dataset" in done


async def test_a_model_that_answers_nonsense_fails_the_cases_with_the_reason(
        open_console: Factory) -> None:
    c = (await open_console(reply="not json at all")).console
    await c.sign_in("acme")
    await c.post(PAGE + "/run")
    done = await finished(c)
    assert "0% · 0/2 FAIL" in done
    assert re.search(r"<li>\w+: ", done)  # each case names its error kind and message


async def test_with_auth_off_anyone_runs_the_base_features_evals(
        open_console: Factory) -> None:
    c = (await open_console(auth="off")).console
    page = await c.get(PAGE)
    assert "the base feature only (no tenant)" in page.text
    await c.post(PAGE + "/run")
    assert "Latest run: base only" in await finished(c)


async def test_a_shutdown_stops_a_run_in_progress_and_the_page_says_so(
        open_console: Factory) -> None:
    opened = await open_console(delay=30)
    c = opened.console
    await c.sign_in("acme")
    await c.post(PAGE + "/run")
    await console_package.aclose(opened.app)
    assert "stopped: the server shut down" in await finished(c)
