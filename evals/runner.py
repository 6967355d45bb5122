"""Runs eval datasets against a feature caller, concurrently, and scores every case.

The runner knows nothing of how a feature is called: it is given an `Invoker` (the engine, a
tenant's view of it, or a test's fake) and the features to evaluate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from featurelm.engine.errors import ContractError, FeaturelmError
from featurelm.engine.schemas import violations
from featurelm.evals.assertions import Observation, Services
from featurelm.evals.dataset import Case, load_dataset
from featurelm.evals.results import CaseResult, FeatureResult, RunResult


@dataclass(frozen=True)
class Invocation:
    """What one feature call returned."""

    output: dict[str, Any]
    latency_ms: float
    cost_usd: float
    meta: dict[str, Any] = field(default_factory=dict)


class CallFailed(Exception):
    """A feature call that failed after spending money: the engine's error and what it cost.

    An invoker that can tell what a failed call cost raises this (from the engine's error), so
    a case that failed after three paid attempts does not report a free call."""

    def __init__(self, error: FeaturelmError, cost_usd: float):
        super().__init__(str(error))
        self.error = error
        self.cost_usd = cost_usd


class Invoker(Protocol):
    """Calls a feature once; raises the engine's errors (or CallFailed) when the call fails."""

    async def __call__(self, feature: str, input: dict[str, Any], *,
                       case_id: str) -> Invocation: ...


@dataclass(frozen=True)
class FeatureTarget:
    """A feature to evaluate, as its contract describes it."""

    name: str
    threshold: float
    output_schema: dict[str, Any]
    dataset: Path | None
    version: int | None = None


class Progress(Protocol):
    def start(self, total_runs: int) -> None: ...

    def advance(self) -> None: ...

    def feature_done(self, result: FeatureResult) -> None: ...


class _Silent:
    def start(self, total_runs: int) -> None:
        pass

    def advance(self) -> None:
        pass

    def feature_done(self, result: FeatureResult) -> None:
        pass


async def run_suite(targets: Sequence[FeatureTarget], invoke: Invoker, *,
                    services: Services | None = None, repeat: int = 1, concurrency: int = 4,
                    progress: Progress | None = None) -> list[FeatureResult]:
    """Evaluate every target; a feature whose dataset cannot be used fails with the reason."""
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    services = services or Services()
    progress = progress or _Silent()
    loaded: list[tuple[FeatureTarget, list[Case] | None, str | None]] = []
    for target in targets:
        if target.dataset is None:
            loaded.append((target, None, "no eval dataset (set evals.dataset in the feature "
                                         f"file or add evals/datasets/{target.name}.jsonl)"))
            continue
        try:
            loaded.append((target, load_dataset(target.dataset).cases, None))
        except ContractError as exc:
            loaded.append((target, None, f"invalid dataset: {exc}"))
    progress.start(sum(len(cases or ()) for _, cases, _ in loaded) * repeat)
    limit = asyncio.Semaphore(concurrency)
    runner = _Runner(invoke, services, repeat, limit, progress)
    return list(await asyncio.gather(*(runner.feature(t, cases, error)
                                       for t, cases, error in loaded)))


class _Runner:
    def __init__(self, invoke: Invoker, services: Services, repeat: int,
                 limit: asyncio.Semaphore, progress: Progress):
        self.invoke = invoke
        self.services = services
        self.repeat = repeat
        self.limit = limit
        self.progress = progress

    async def feature(self, target: FeatureTarget, cases: list[Case] | None,
                      error: str | None) -> FeatureResult:
        result = FeatureResult(name=target.name, threshold=target.threshold,
                               dataset=str(target.dataset) if target.dataset else None,
                               version=target.version, error=error)
        if cases is not None:
            result.cases = list(await asyncio.gather(
                *(self.case(target, case) for case in cases)))
        self.progress.feature_done(result)
        return result

    async def case(self, target: FeatureTarget, case: Case) -> CaseResult:
        result = CaseResult(id=case.id, input=case.input, weight=case.weight)
        # Repeats run one after another so a recording replays them in the order they were made.
        for _ in range(self.repeat):
            async with self.limit:
                result.runs.append(await self.run_once(target, case))
            self.progress.advance()
        return result

    async def run_once(self, target: FeatureTarget, case: Case) -> RunResult:
        started = time.perf_counter()
        try:
            call = await self.invoke(target.name, case.input, case_id=case.id)
        except CallFailed as failed:
            exc = failed.error
            return RunResult(error=str(exc) or type(exc).__name__, error_kind=exc.kind,
                             cost_usd=failed.cost_usd,
                             latency_ms=(time.perf_counter() - started) * 1000)
        except FeaturelmError as exc:
            return RunResult(error=str(exc) or type(exc).__name__, error_kind=exc.kind,
                             latency_ms=(time.perf_counter() - started) * 1000)
        except Exception as exc:  # one broken case must not hide the results of the others
            return RunResult(error=f"{type(exc).__name__}: {exc}", error_kind="crash",
                             latency_ms=(time.perf_counter() - started) * 1000)
        run = RunResult(output=call.output, latency_ms=call.latency_ms, cost_usd=call.cost_usd,
                        meta=call.meta)
        # The engine guarantees schema-valid output; the suite checks that guarantee too.
        problems = violations(target.output_schema, call.output)
        if problems:
            run.error = "output does not satisfy the output schema: " + "; ".join(
                f"{v.path}: {v.message}" for v in problems[:5])
            run.error_kind = "schema"
            return run
        seen = Observation(feature=target.name, case_id=case.id, input=case.input,
                           output=call.output, latency_ms=call.latency_ms,
                           cost_usd=call.cost_usd, services=self.services)
        run.outcomes = [await assertion.check(seen) for assertion in case.assertions]
        return run
