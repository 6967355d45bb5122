"""Eval runs the console starts: the feature's dataset against the base feature and against the
tenant's active override, side by side (docs/console.md, "Evals").

Both sides run as the tenant, uncached and untraced, exactly as the eval gate runs a candidate
(featurelm/evals/gate.py), and both sides run at the same time so the page's progress counts
every case from the start. The latest run of each (tenant, feature) is kept in this process's
memory, bounded; a restart forgets them, like the console's sessions.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from featurelm.engine import Engine
from featurelm.engine.errors import ConflictError
from featurelm.engine.loader import LoadedFeature

if TYPE_CHECKING:
    # The eval machinery (and RE2, which its assertions use) loads with the first run, not
    # with every server: the console's other pages never need it.
    from featurelm.evals.compare import Comparison
    from featurelm.evals.results import FeatureResult, SuiteResult
    from featurelm.evals.runner import FeatureTarget

log = logging.getLogger("featurelm.console")

#: Latest runs kept (one per tenant and feature); the oldest finished one goes first.
MAX_KEPT = 100
#: Runs in progress on this server at once, all tenants together: each one calls the model.
MAX_RUNNING = 2
#: Cases in flight per side of one run (a run has two sides).
CONCURRENCY = 2


@dataclass(frozen=True)
class Plot:
    """One of the report's plots as an inline PNG (the console's CSP allows data: images)."""

    id: str
    title: str
    width: int
    height: int
    data: str


@dataclass
class EvalRun:
    tenant: str | None
    feature: str
    #: The tenant's active override version when the run started; None: base only.
    override_version: int | None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    state: str = "running"  # running, done or failed
    total: int = 0
    done: int = 0
    duration_s: float | None = None
    error: str | None = None
    base: SuiteResult | None = None
    override: SuiteResult | None = None
    comparison: Comparison | None = None
    #: None when matplotlib is not installed (the `evals` extra).
    plots: list[Plot] | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def override_label(self) -> str:
        return f"{self.tenant}'s override v{self.override_version}"


class _Counter:
    """The runner's progress, counted on the run for the page to show."""

    def __init__(self, run: EvalRun) -> None:
        self.run = run

    def start(self, total_runs: int) -> None:
        self.run.total += total_runs

    def advance(self) -> None:
        self.run.done += 1

    def feature_done(self, result: FeatureResult) -> None:
        pass


class EvalRuns:
    """The latest run per (tenant, feature), at most one running per pair."""

    def __init__(self, *, max_kept: int = MAX_KEPT, max_running: int = MAX_RUNNING) -> None:
        self.max_kept = max_kept
        self.max_running = max_running
        self._runs: OrderedDict[tuple[str, str], EvalRun] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, tenant: str | None, feature: str) -> EvalRun | None:
        return self._runs.get((tenant or "", feature))

    def visible(self, tenant: str | None, *, every_tenant: bool) -> list[EvalRun]:
        """Newest first: the admin's view holds every tenant's runs, others only their own."""
        return [run for run in reversed(self._runs.values())
                if every_tenant or run.tenant == tenant]

    def start(self, engine: Engine, base: LoadedFeature, override: LoadedFeature | None,
              target: Callable[[LoadedFeature], FeatureTarget], tenant: str | None) -> EvalRun:
        """Start a run in the background; refused while the pair's last run is still running
        or the server already runs `max_running`."""
        key = (tenant or "", base.name)
        if (last := self._runs.get(key)) is not None and last.running:
            raise ConflictError(f"an eval of {base.name} is already running for "
                                f"{tenant or 'the base features'}: wait for it to finish")
        if sum(run.running for run in self._runs.values()) >= self.max_running:
            raise ConflictError(f"this server already runs {self.max_running} evals: try "
                                "again when one has finished")
        run = EvalRun(tenant, base.name, override.override_version if override else None)
        self._runs.pop(key, None)
        self._runs[key] = run
        while len(self._runs) > self.max_kept:
            oldest = next((k for k, r in self._runs.items() if not r.running), None)
            if oldest is None:
                break
            del self._runs[oldest]
        task = asyncio.create_task(self._run(run, engine, base, override, target))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._ended(done, run))
        return run

    def _ended(self, task: asyncio.Task[None], run: EvalRun) -> None:
        self._tasks.discard(task)
        # Cancelled, perhaps before it even started: the page must not poll forever.
        if run.running:
            run.state, run.error = "failed", "stopped: the server shut down"

    async def _run(self, run: EvalRun, engine: Engine, base: LoadedFeature,
                   override: LoadedFeature | None,
                   target: Callable[[LoadedFeature], FeatureTarget]) -> None:
        from featurelm.evals.assertions import Services
        from featurelm.evals.compare import compare
        from featurelm.evals.harness import EngineJudge, feature_invoker
        from featurelm.evals.results import SuiteResult
        from featurelm.evals.runner import run_suite
        from featurelm.evals.similarity import LazyEmbedder

        started = time.monotonic()
        services = Services(embedder=LazyEmbedder(), judge=EngineJudge(engine))
        progress = _Counter(run)

        async def side(feature: LoadedFeature) -> SuiteResult:
            invoke = feature_invoker(engine, feature, run.tenant)
            [result] = await run_suite([target(feature)], invoke, services=services,
                                       concurrency=CONCURRENCY, progress=progress)
            return SuiteResult(features=[result], meta={
                "mode": "live", "tenant": run.tenant,
                "started_at": run.started_at.isoformat(timespec="seconds"),
                "override_version": feature.override_version})

        try:
            sides = await asyncio.gather(side(base), *([side(override)] if override else []))
            run.base = sides[0]
            if override is not None:
                run.override = sides[1]
                run.comparison = compare(sides[0], sides[1], label_a="base",
                                         label_b=run.override_label)
            run.plots = await asyncio.to_thread(_plots, run)
            run.state = "done"
        except Exception as exc:  # the page shows one line; the log has the rest
            log.exception("console eval run failed", extra={"feature": run.feature})
            run.state, run.error = "failed", f"the eval could not run: {exc}"
        finally:
            run.duration_s = round(time.monotonic() - started, 3)

    async def aclose(self) -> None:
        """Stop the runs in progress (at shutdown, before the engine closes)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _plots(run: EvalRun) -> list[Plot] | None:
    """The eval report's plots over both sides, each side a bar or series of its own."""
    from featurelm.evals.reports.html import plots_available

    if not plots_available() or run.base is None:
        return None
    from featurelm.evals.reports import plots

    sides = [dataclasses.replace(f, name="base") for f in run.base.features]
    if run.override is not None:
        sides += [dataclasses.replace(f, name=run.override_label) for f in run.override.features]
    drawn = [("plot-pass-rate", "Pass rate, base and override", plots.pass_rates(sides)),
             ("plot-latency", "Latency distribution", plots.latency_distribution(sides)),
             ("plot-cost", "Cost per case", plots.cost_per_case(sides))]
    found = []
    for plot_id, title, png in drawn:
        # PNG IHDR holds the pixel size; giving it to <img> keeps the layout stable.
        width, height = struct.unpack(">II", png[16:24])
        found.append(Plot(plot_id, title, width, height, base64.b64encode(png).decode("ascii")))
    return found
