"""Console pages for evals: the latest runs, one feature's run with the report's plots and base
versus the tenant's active override case by case, starting a run, and its progress for htmx
to poll. A tenant sees and starts runs for itself only; the admin sees every tenant's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from featurelm.engine.errors import NotFoundError
from featurelm.serving.auth import check_tenant
from featurelm.serving.console.eval_runs import EvalRun, EvalRuns
from featurelm.serving.console.web import ConsoleRoute, Ctx, checked_form, context, page, redirect
from featurelm.serving.state import services

if TYPE_CHECKING:
    from featurelm.evals.results import CaseResult, RunResult, SuiteResult

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)
#: The eval report's own policy: inline styles, inline images, nothing else.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'"


def runs_of(request: Request) -> EvalRuns:
    found: EvalRuns = request.app.state.console_evals
    return found


def _tenant(ctx: Ctx, asked: str) -> str | None:
    """The tenant whose runs are shown: the admin may name any, others get their own (a
    tenant key naming another tenant is told it does not exist, as over HTTP)."""
    tenant = asked or ctx.tenant
    if tenant is not None:
        check_tenant(ctx.caller, tenant)
    return tenant


@router.get("/evals", response_class=HTMLResponse)
async def evals_index(request: Request) -> HTMLResponse:
    ctx = await context(request)
    harness = _harness()
    engine = services(request).engine
    gated = [f for f in engine.features() if harness.target_for(engine, f).dataset is not None]
    return page(ctx, "evals.html", features=gated,
                runs=runs_of(request).visible(ctx.tenant, every_tenant=ctx.caller.admin))


def _harness() -> Any:
    # The eval machinery loads with the first evals page, not with every server.
    from featurelm.evals import harness

    return harness


@router.get("/features/{name}/evals", response_class=HTMLResponse)
async def feature_evals(request: Request, name: str, tenant: str = "") -> HTMLResponse:
    ctx = await context(request)
    return await _feature_page(ctx, name, _tenant(ctx, tenant), "feature_evals.html")


@router.get("/features/{name}/evals/status", response_class=HTMLResponse)
async def feature_evals_status(request: Request, name: str, tenant: str = "") -> HTMLResponse:
    """The run's part of the page alone: what htmx polls while a run is in progress."""
    ctx = await context(request)
    return await _feature_page(ctx, name, _tenant(ctx, tenant), "_eval_run.html")


async def _feature_page(ctx: Ctx, name: str, tenant: str | None,
                        template: str) -> HTMLResponse:
    engine = services(ctx.request).engine
    base = engine.feature(name)
    if base is None:
        raise NotFoundError(f"unknown feature {name!r}")
    effective = await engine.resolve(name, tenant)
    run = runs_of(ctx.request).get(tenant, name)
    return page(ctx, template, feature=base, tenant=tenant, run=run,
                active_version=effective.override_version,
                dataset=_harness().target_for(engine, base).dataset,
                rows=_rows(run) if run is not None and not run.running else [],
                tenant_query=f"?tenant={quote(tenant)}" if tenant and ctx.caller.admin else "")


@router.post("/features/{name}/evals/run", response_model=None)
async def feature_evals_run(request: Request, name: str) -> RedirectResponse:
    """Start a run: base and, when the tenant has one active, its override."""
    ctx = await context(request)
    await checked_form(request, ctx.session)
    tenant = ctx.tenant
    if tenant is not None:
        check_tenant(ctx.caller, tenant)
    engine = services(request).engine
    base = engine.feature(name)
    if base is None:
        raise NotFoundError(f"unknown feature {name!r}")
    effective = await engine.resolve(name, tenant)
    harness = _harness()
    runs_of(request).start(engine, base, effective if effective.override_version else None,
                           lambda feature: harness.target_for(engine, feature), tenant)
    return redirect(f"/features/{name}/evals")


@router.get("/features/{name}/evals/report/{side}.html", response_class=HTMLResponse)
async def feature_evals_report(request: Request, name: str, side: str,
                               tenant: str = "") -> HTMLResponse:
    """One side's full eval report (report.html, as `featurelm eval --report` writes it),
    under the report's own policy: it needs inline styles and nothing else."""
    from featurelm.evals.reports import html

    ctx = await context(request)
    run = runs_of(request).get(_tenant(ctx, tenant), name)
    suite = None if run is None else {"base": run.base, "override": run.override}.get(side)
    if suite is None:
        raise NotFoundError(f"no finished eval of {name!r} with a {side!r} side")
    return HTMLResponse(html.render(suite), headers={"Content-Security-Policy": REPORT_CSP})


# -- base versus override, case by case ---------------------------------------------------------

@dataclass
class Side:
    passed: bool
    why: list[str]
    output: str


@dataclass
class Row:
    id: str
    input: str
    base: Side | None
    override: Side | None
    #: From evals/compare.py: "pass->fail", "fail->pass", "added", "removed" or "".
    change: str


def _rows(run: EvalRun) -> list[Row]:
    """Every case with both sides; regressions first, then other failures, then the rest."""
    changes = {c.case: c.change for f in run.comparison.features
               for c in f.changes} if run.comparison else {}
    base, override = _cases(run.base), _cases(run.override)
    rows = []
    for case_id in [*base, *(c for c in override if c not in base)]:
        shown = base.get(case_id) or override[case_id]
        rows.append(Row(case_id, _dump(shown.input), _side(base.get(case_id)),
                        _side(override.get(case_id)), changes.get(case_id, "")))

    def order(row: Row) -> int:
        failing = any(s is not None and not s.passed for s in (row.base, row.override))
        return 0 if row.change == "pass->fail" else 1 if failing else 2
    return sorted(rows, key=order)


def _cases(suite: SuiteResult | None) -> dict[str, CaseResult]:
    return {} if suite is None else {c.id: c for f in suite.features for c in f.cases}


def _side(case: CaseResult | None) -> Side | None:
    if case is None:
        return None
    run: RunResult | None = case.first_failure or (case.runs[0] if case.runs else None)
    if run is None:
        return Side(False, ["no run"], "")
    why = [f"{run.error_kind or 'error'}: {run.error}"] if run.error else [
        f"{o.type}{f' at {o.path}' if o.path else ''}: {o.message}"
        for o in run.failed_outcomes]
    return Side(case.passed, why, _dump(run.output) if run.output is not None else "(no output)")


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
