"""Eval gating of tenant overrides: a candidate is activated only if its eval cases still pass.

A refused candidate is told which cases failed, with their inputs and failed assertions, so
the tenant can fix the override rather than guess.
"""

from __future__ import annotations

from featurelm.engine import Engine
from featurelm.engine.errors import ContractError, ContractIssue
from featurelm.engine.loader import LoadedFeature
from featurelm.engine.overrides import EvalGate


def make_eval_gate(engine: Engine, *, concurrency: int = 4) -> EvalGate:
    """A gate that runs the feature's dataset against the candidate, as the tenant, uncached."""

    async def gate(candidate: LoadedFeature, tenant: str) -> float:
        # The eval machinery loads with the first gated activation, not with every server.
        from featurelm.evals.assertions import Services
        from featurelm.evals.baseline import describe_failure
        from featurelm.evals.harness import EngineJudge, feature_invoker, target_for
        from featurelm.evals.runner import run_suite
        from featurelm.evals.similarity import LazyEmbedder

        target = target_for(engine, candidate)
        if target.dataset is None:
            return 1.0  # nothing to gate on: the feature ships no eval cases
        [result] = await run_suite([target], feature_invoker(engine, candidate, tenant),
                                   concurrency=concurrency,
                                   services=Services(embedder=LazyEmbedder(),
                                                     judge=EngineJudge(engine)))
        source = f"override {tenant}/{candidate.name}"
        if result.error:
            raise ContractError([ContractIssue(source, "evals",
                                               f"the eval gate could not run: {result.error}",
                                               "fix the feature's eval dataset")])
        if result.pass_rate < target.threshold:
            failing = [case for case in result.cases if not case.passed]
            raise ContractError([ContractIssue(
                source, "evals",
                f"eval pass rate {result.pass_rate:.0%} is below the threshold "
                f"{target.threshold:.0%}: {len(failing)} of {len(result.cases)} cases fail",
                "improve the override until its eval cases pass"),
                *(ContractIssue(source, f"evals: case {case.id!r}",
                                f"fails: {describe_failure(case)}") for case in failing)])
        return result.pass_rate

    return gate
