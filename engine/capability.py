"""Per feature and per backend on its routes: how the output schema will be honoured.

Decided at load time, so `check` and `serve` say it before the first call: constrained (a
grammar, or the server's `json_schema` / `structured_outputs`), degraded to prompt + validate
+ repair + re-ask (with the schema path the backend cannot constrain), or refused when the
feature cannot be served at all (its fixed prompt alone overflows every window on its route,
counted with the backend's own tokenizer where it has one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from featurelm.engine.config import EngineConfig
from featurelm.engine.errors import ContractError, ContractIssue
from featurelm.engine.loader import LoadedFeature
from featurelm.engine.prompts import PromptRenderer
from featurelm.engine.tokens import backend_prompt_tokens, prompt_token_bound
from featurelm.engine.types import Message

log = logging.getLogger(__name__)

Status = Literal["constrained", "degraded", "refused"]


@runtime_checkable
class PlanningBackend(Protocol):
    """A backend that constrains in-process and can say how, per schema, without a model."""

    def plan(self, schema: Mapping[str, Any], prefix: str = "output") -> Any: ...


@dataclass(frozen=True)
class RoutePlan:
    feature: str
    source: str
    route: str
    backend: str
    status: Status
    #: Why not simply constrained: the schema paths or the token counts; empty when it is.
    reasons: tuple[str, ...] = ()

    def __str__(self) -> str:
        why = f": {'; '.join(self.reasons)}" if self.reasons else ""
        return f"{self.feature}: backend {self.backend!r} (route {self.route!r}) {self.status}{why}"


def _prompt_tokens(backend: Any, messages: tuple[Message, ...], max_tokens: int) -> int | None:
    """Tokens of `messages` when they might not fit; None when the byte bound already fits."""
    window: int = backend.capabilities.context_window
    if prompt_token_bound(messages) + max_tokens <= window:
        return None
    return backend_prompt_tokens(backend, messages)


def plan_feature(feature: LoadedFeature, config: EngineConfig, backends: Mapping[str, Any],
                 renderer: PromptRenderer) -> list[RoutePlan]:
    """One plan per (route, backend) the feature may be served on."""
    plans: list[RoutePlan] = []
    schema = feature.spec.output
    max_tokens = feature.spec.model.max_output_tokens
    fixed: tuple[Message, ...] | None = None
    for route in dict.fromkeys(feature.allowed_routes()):
        route_config = config.routes.get(route)
        if route_config is None:
            continue
        for name in route_config.backends:
            backend = backends.get(name)
            if backend is None:
                continue
            if fixed is None:
                fixed = feature.fixed_turns(renderer)
            tokens = _prompt_tokens(backend, fixed, max_tokens)
            window = backend.capabilities.context_window
            if tokens is not None and tokens + max_tokens > window:
                plans.append(RoutePlan(
                    feature.name, feature.source, route, name, "refused",
                    (f"the fixed prompt (schema and examples) takes {tokens} tokens and "
                     f"{max_tokens} are reserved for the output, over its {window}-token "
                     "context window",)))
            elif isinstance(backend, PlanningBackend):
                plan = backend.plan(schema)
                plans.append(RoutePlan(feature.name, feature.source, route, name, plan.status,
                                       tuple(plan.unenforced)))
            elif backend.capabilities.structured == "none":
                plans.append(RoutePlan(feature.name, feature.source, route, name, "degraded",
                                       ("output: the backend has no structured output "
                                        "(prompt, validate, repair, re-ask)",)))
            else:
                plans.append(RoutePlan(feature.name, feature.source, route, name,
                                       "constrained"))
    return plans


def check_routes(features: Iterable[LoadedFeature], config: EngineConfig,
                 backends: Mapping[str, Any], renderer: PromptRenderer) -> list[RoutePlan]:
    """Every feature's plans; raises ContractError naming each feature that no backend on
    its own route can serve. `featurelm check` prints the degraded plans and `serve` logs
    them at start (`degraded_plans`); a one-off `run` keeps its stderr for its own error."""
    plans: list[RoutePlan] = []
    issues: list[ContractIssue] = []
    for feature in features:
        mine = plan_feature(feature, config, backends, renderer)
        plans.extend(mine)
        own = [p for p in mine if p.route == feature.spec.model.route]
        if own and all(p.status == "refused" for p in own):
            issues.append(ContractIssue(
                feature.source, "output", f"cannot be served on route {own[0].route!r}: "
                + own[0].reasons[0], "shorten the output schema or the examples, or route it "
                "to a backend with a larger context window"))
    if issues:
        raise ContractError(issues)
    return plans


def degraded_plans(plans: Iterable[RoutePlan]) -> list[RoutePlan]:
    """The plans that do not constrain the whole schema, each saying why."""
    return [plan for plan in plans if plan.status != "constrained" or plan.reasons]
