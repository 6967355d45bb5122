"""Connects the eval runner to an Engine: what to evaluate, how to call it, and the LLM judge.

Eval calls carry the case id as a label (recordings are filed by it) and never touch the cache,
so every case exercises the whole pipeline and its latency is the model's, not a cache hit's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from featurelm.engine import Engine, Result, RunOptions
from featurelm.engine.dispatch.dispatcher import CallRecord
from featurelm.engine.errors import FeaturelmError, NotFoundError
from featurelm.engine.loader import LoadedFeature
from featurelm.evals.assertions import Verdict
from featurelm.evals.dataset import find_dataset
from featurelm.evals.runner import CallFailed, FeatureTarget, Invocation, Invoker

#: Where datasets are looked for when a feature file does not name one (relative to the root).
DATASETS_DIR = Path("evals/datasets")


async def targets(engine: Engine, names: list[str] | None, tenant: str | None, *,
                  recorded: bool = False) -> list[FeatureTarget]:
    """The features to evaluate, as `tenant` sees them: those named, or all with a dataset.

    `recorded` runs (record, replay) are held to each feature's `evals.replay_threshold`."""
    known = engine.feature_names()
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise NotFoundError(f"unknown feature(s): {', '.join(unknown)} "
                                f"(known: {', '.join(known) or 'none'})")
    chosen = [target_for(engine, await engine.resolve(n, tenant), recorded=recorded)
              for n in names or known]
    return chosen if names else [t for t in chosen if t.dataset is not None]


def missing_datasets(engine: Engine) -> list[tuple[str, Path]]:
    """(feature, path) for each feature file naming an eval dataset that is not there."""
    missing = []
    for feature in engine.features():
        named = feature.spec.evals.dataset
        if named and not engine.config.path(Path(named)).is_file():
            missing.append((feature.name, engine.config.path(Path(named))))
    return missing


def target_for(engine: Engine, feature: LoadedFeature, *,
               recorded: bool = False) -> FeatureTarget:
    policy = feature.spec.evals
    threshold = policy.threshold
    if recorded and policy.replay_threshold is not None:
        threshold = policy.replay_threshold
    if policy.dataset:
        dataset: Path | None = engine.config.path(Path(policy.dataset))
    else:
        dataset = find_dataset(engine.config.path(DATASETS_DIR), feature.name)
    return FeatureTarget(name=feature.name, threshold=threshold,
                         output_schema=feature.spec.output, dataset=dataset,
                         version=feature.spec.version)


class EngineInvoker:
    """Calls features through the engine as one tenant, on one route, without the cache.

    A failed call still cost what its backend calls cost: the engine reports every backend call
    (labelled with feature and case), and a failure is raised as CallFailed with that sum."""

    def __init__(self, engine: Engine, *, tenant: str | None = None, route: str | None = None):
        self.engine = engine
        self.tenant = tenant
        self.route = route
        self._spent: dict[tuple[str, str], float] = {}
        engine.on_call(self._count)

    def _count(self, record: CallRecord) -> None:
        labels = record.labels
        if labels.get("purpose") == "judge":
            return
        key = (labels.get("feature", ""), labels.get("case", ""))
        if key in self._spent:
            self._spent[key] += record.cost_usd

    async def __call__(self, feature: str, input: dict[str, Any], *,
                       case_id: str) -> Invocation:
        options = RunOptions(route=self.route, cache_read=False, cache_write=False,
                             coalesce=False, labels={"case": case_id, "feature": feature})
        # A case's repeats run one after another, so one counter per case is enough.
        key = (feature, case_id)
        self._spent[key] = 0.0
        try:
            result = await self.engine.run(feature, input, tenant=self.tenant, options=options)
        except FeaturelmError as exc:
            raise CallFailed(exc, round(self._spent.get(key, 0.0), 8)) from exc
        finally:
            self._spent.pop(key, None)
        return _invocation(result)


def feature_invoker(engine: Engine, subject: LoadedFeature, tenant: str | None) -> Invoker:
    """Calls one given version of a feature (an override not active yet, or the base) as
    `tenant`, without the cache: how the eval gate and the console test a version."""

    async def invoke(feature: str, input: dict[str, Any], *, case_id: str) -> Invocation:
        # Labelled as an eval case: never traced, like every eval call.
        options = RunOptions(cache_read=False, cache_write=False, coalesce=False,
                             labels={"case": case_id, "feature": feature})
        return _invocation(await engine.run_feature(subject, input, tenant=tenant,
                                                    options=options))
    return invoke


def _invocation(result: Result) -> Invocation:
    return Invocation(output=result.output, latency_ms=result.meta.latency_ms,
                      cost_usd=result.meta.cost_usd, meta=result.meta.as_dict())


JUDGE_OUTPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string", "maxLength": 1000},
    },
    "required": ["score", "reason"],
    "additionalProperties": False,
}

_JUDGE_SYSTEM = (
    "You grade the output of a software feature against a rubric. Be strict and literal: "
    "judge only what the rubric asks. Give a score from 0 (fails the rubric) to 1 (fully meets "
    "it) and one or two sentences of reason."
)
_JUDGE_USER = (
    "Rubric:\n{{ rubric }}\n\n"
    "Input the feature was given (JSON):\n{{ input }}\n\n"
    "Output to grade (JSON):\n{{ output }}"
)


class EngineJudge:
    """An LLM judge: a feature contract of its own, run on the route each assertion names.

    Its output schema ({score, reason}) is enforced by the engine's structured-output loop, and
    its requests go through the route's backends, so they are recorded and replayed like any.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._features: dict[str, LoadedFeature] = {}

    def _feature(self, route: str) -> LoadedFeature:
        if route not in self._features:
            if route not in self.engine.config.routes:
                raise ValueError(f"route {route!r} is not configured in featurelm.yaml "
                                 f"(routes: {', '.join(sorted(self.engine.config.routes))})")
            spec = {
                "name": "eval_judge",
                "description": "Grades a feature's output against a rubric.",
                "input": {"type": "object", "properties": {
                    "rubric": {"type": "string"}, "input": {"type": "string"},
                    "output": {"type": "string"}}, "required": ["rubric", "input", "output"]},
                "output": JUDGE_OUTPUT,
                "prompt": {"system": _JUDGE_SYSTEM, "user": _JUDGE_USER},
                "model": {"route": route, "temperature": 0.0, "max_output_tokens": 300},
            }
            # Rubric, input and output are template data, never template source.
            self._features[route] = self.engine.build_feature(spec, source="<eval judge>")
        return self._features[route]

    async def grade(self, *, rubric: str, route: str, feature: str, case_id: str,
                    input: dict[str, Any], output: dict[str, Any]) -> Verdict:
        data = {"rubric": rubric, "input": json.dumps(input, ensure_ascii=False, sort_keys=True),
                "output": json.dumps(output, ensure_ascii=False, sort_keys=True)}
        # The judge runs through the whole pipeline (route fallbacks, deadline, schema
        # enforcement), uncached so a recording holds every judge call.
        options = RunOptions(cache_read=False, cache_write=False, coalesce=False,
                             labels={"feature": feature, "case": case_id, "purpose": "judge"})
        result = await self.engine.run_feature(self._feature(route), data, options=options)
        return Verdict(score=float(result.output["score"]), reason=str(result.output["reason"]))
