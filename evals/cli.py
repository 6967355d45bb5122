"""`featurelm eval`: run the eval suite, gate on thresholds, write reports, compare, record, replay.

`featurelm.evals.arguments` fills the subcommand's parser and `run` executes it; both are what
the main `featurelm` command line calls. Exit codes: 0 all features meet their thresholds, 1 some do
not (or a replay met an unrecorded request or a case that passed in the recorded baseline fails,
or a comparison regressed), 2 usage or config error (unknown feature, tenant or route).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from featurelm.engine.errors import ContractError, ContractIssue, FeaturelmError
from featurelm.evals.baseline import baseline_path, regressions, write_baseline
from featurelm.evals.cassettes import CassetteStore
from featurelm.evals.compare import compare, render_markdown
from featurelm.evals.progress import TerminalProgress
from featurelm.evals.recording import Miss, RecordingBackend, ReplayingBackend
from featurelm.evals.results import SuiteResult, load_report


async def run(args: argparse.Namespace) -> int:
    try:
        if args.compare:
            return await _compare(args)
        session = _Session(args)
        suite = await session.suite(tenant=args.tenant, route=args.route)
        session.finish(suite)
        session.gate(suite)
        _print_problems(suite)
        if args.report:
            _write(args.report, suite)
        return 0 if suite.passed else 1
    except ContractError as exc:
        print(f"error: {len(exc.issues)} problem(s) found:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 2
    except (FeaturelmError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


@dataclass
class _Session:
    """One eval invocation: its cassettes (shared by every run it makes) and its settings."""

    args: argparse.Namespace
    store: CassetteStore | None = None
    misses: list[Miss] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.args.record:
            self.store = CassetteStore(self.args.record, fresh=True)
        elif self.args.replay:
            if not self.args.replay.is_dir():
                raise ValueError(f"--replay {self.args.replay}: no such cassette directory")
            self.store = CassetteStore(self.args.replay)

    async def suite(self, *, tenant: str | None, route: str | None,
                    label: str | None = None) -> SuiteResult:
        """Run the suite; `label` names the run (a side of --compare) on every output line."""
        from featurelm.engine import Engine
        from featurelm.evals.assertions import Services
        from featurelm.evals.harness import EngineInvoker, EngineJudge, targets
        from featurelm.evals.runner import run_suite
        from featurelm.evals.similarity import LazyEmbedder

        wrapper = None
        if self.args.record:
            assert self.store is not None
            wrapper = RecordingBackend.wrapper(self.store)
        elif self.args.replay:
            assert self.store is not None
            wrapper = ReplayingBackend.wrapper(self.store, self.misses)
        engine = Engine.from_config(getattr(self.args, "config", None), backend_wrapper=wrapper)
        started = time.monotonic()
        misses_before = len(self.misses)
        progress = TerminalProgress(label or "eval", tag=label)
        try:
            # Every case would fail on a misnamed route or tenant: a usage error, not a result.
            if route is not None and route not in engine.config.routes:
                raise ValueError(f"--route {route}: no such route in {engine.config.root} "
                                 f"(routes: {', '.join(sorted(engine.config.routes))})")
            chosen = await targets(engine, self.args.features, tenant,
                                   recorded=self.store is not None)
            # Serving never needs datasets; for `eval` a named one that is missing is an error.
            missing = [ContractIssue(t.name, "evals.dataset", f"{t.dataset} not found",
                                     "create it or fix evals.dataset in the feature file")
                       for t in chosen if t.dataset is not None and not t.dataset.is_file()]
            if missing:
                raise ContractError(missing)
            features = await run_suite(
                chosen, EngineInvoker(engine, tenant=tenant, route=route),
                services=Services(embedder=LazyEmbedder(), judge=EngineJudge(engine)),
                repeat=self.args.repeat, concurrency=self.args.concurrency, progress=progress)
        finally:
            progress.close()
            await engine.aclose()
        meta = {
            "mode": "record" if self.args.record else "replay" if self.args.replay else "live",
            "tenant": tenant, "route": route, "repeat": self.args.repeat,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - started, 3),
            "featurelm_version": _version(),
            "config": str(engine.config.root),
            "routes": {name: list(r.backends) for name, r in engine.config.routes.items()},
            "backends": {name: {"kind": b.kind, "model": b.model}
                         for name, b in engine.config.backends.items()},
        }
        problems = [f"replay: {miss}: its prompt, schema or model settings changed since "
                    f"{self.args.replay} was recorded; record it again with `make eval-record` "
                    "and commit the cassettes" for miss in self.misses[misses_before:]]
        if not chosen:
            problems.append("no feature has an eval dataset; nothing was evaluated")
        return SuiteResult(features=features, meta=meta, problems=_unique(problems))

    def finish(self, suite: SuiteResult | None = None) -> None:
        """Save what a recording run recorded: the cassettes and, for `suite`, the baseline."""
        if self.args.record and self.store is not None:
            for path in self.store.save():
                print(f"recorded {path}", file=sys.stderr)
            if suite is not None and suite.features:
                path = write_baseline(self.args.record, suite)
                print(f"recorded {path}", file=sys.stderr)

    def gate(self, suite: SuiteResult) -> None:
        """In replay, fail every case that passed when the cassettes were recorded."""
        if not self.args.replay:
            return
        path = baseline_path(self.args.replay)
        if not path.is_file():
            return
        missed = {(m.feature, m.case) for m in self.misses}
        suite.problems.extend(regressions(load_report(path), suite, source=path, skip=missed))


async def _compare(args: argparse.Namespace) -> int:
    session = _Session(args)
    # Both sides are checked before either runs: a typo in B must not cost A's whole run.
    await _require_tenants(args, [spec.partition(":")[2] for spec in args.compare
                                  if spec.startswith("tenant:")])
    suites = []
    for label, spec in zip("ab", args.compare, strict=True):
        suite = await _resolve(session, spec, label)
        suites.append(suite)
        if args.report and not _is_report_file(spec):
            _write(args.report / label, suite)
    session.finish()
    comparison = compare(suites[0], suites[1], label_a=args.compare[0], label_b=args.compare[1])
    text = render_markdown(comparison)
    print(text)
    for label, spec, suite in zip("ab", args.compare, suites, strict=True):
        _print_problems(suite, tag=f"{label}: {spec}")
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "comparison.md").write_text(text, encoding="utf-8")
        (args.report / "comparison.json").write_text(
            json.dumps(comparison.to_json(), indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8")
    ok = comparison.passed and not any(s.problems for s in suites)
    return 0 if ok else 1


async def _require_tenants(args: argparse.Namespace, tenants: list[str]) -> None:
    if not tenants:
        return
    from featurelm.engine import Engine

    engine = Engine.from_config(getattr(args, "config", None))
    try:
        for tenant in tenants:
            await engine.overrides.require_tenant(tenant)
    finally:
        await engine.aclose()


async def _resolve(session: _Session, spec: str, label: str) -> SuiteResult:
    """A report file, or a run: 'base', 'tenant:NAME', 'route:NAME'."""
    if _is_report_file(spec):
        return load_report(Path(spec))
    tenant, route = session.args.tenant, session.args.route
    kind, _, value = spec.partition(":")
    if spec == "base":
        tenant = None
    elif kind == "tenant" and value:
        tenant = value
    elif kind == "route" and value:
        route = value
    else:
        raise ValueError(f"--compare {spec!r}: give a report.json file, 'base', "
                         "'tenant:NAME' or 'route:NAME'")
    return await session.suite(tenant=tenant, route=route, label=f"{label}: {spec}")


def _is_report_file(spec: str) -> bool:
    return spec.endswith(".json") or Path(spec).is_file()


def _write(directory: Path, suite: SuiteResult) -> None:
    from featurelm.evals.reports import write_reports

    for path in write_reports(suite, directory):
        print(f"wrote {path}", file=sys.stderr)


def _print_problems(suite: SuiteResult, *, tag: str | None = None) -> None:
    prefix = f"[{tag}] " if tag else ""
    for problem in suite.problems:
        print(f"error: {prefix}{problem}", file=sys.stderr)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _version() -> str:
    try:
        return metadata.version("featurelm")
    except metadata.PackageNotFoundError:
        return "unknown"
