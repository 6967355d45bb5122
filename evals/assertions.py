"""The assertion types a dataset case may state about a feature's output, and how each is checked.

Each type is a pydantic model (datasets are written by people, so unknown keys are errors) with
an async `check` that returns an `Outcome`; `Assertion` is the union, discriminated by `type`.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any, Literal, Protocol

import re2
from pydantic import BaseModel, ConfigDict, Field, field_validator

from featurelm.evals.output_path import PathMissing, resolve, type_name
from featurelm.evals.similarity import Embedder, SimilarityUnavailable, cosine


@dataclass(frozen=True)
class Verdict:
    """A judge's grade of one output."""

    score: float
    reason: str


class Judge(Protocol):
    """Grades an output against a rubric through a configured route."""

    async def grade(self, *, rubric: str, route: str, feature: str, case_id: str,
                    input: dict[str, Any], output: dict[str, Any]) -> Verdict: ...


@dataclass
class Services:
    """What the costlier assertions need; absent services make those assertions fail, loudly."""

    #: Returns the embedding model, loading it on first use; raises SimilarityUnavailable.
    embedder: Callable[[], Awaitable[Embedder]] | None = None
    judge: Judge | None = None


@dataclass(frozen=True)
class Observation:
    """One run of a feature, as the assertions see it."""

    feature: str
    case_id: str
    input: dict[str, Any]
    output: dict[str, Any]
    latency_ms: float
    cost_usd: float
    services: Services = field(default_factory=Services)


@dataclass
class Outcome:
    """The result of checking one assertion against one run."""

    type: str
    passed: bool
    message: str
    weight: float = 1.0
    path: str | None = None
    #: What was measured: the value at the path, a similarity, a judge score, a latency.
    observed: Any = None


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(1.0, gt=0, description="Share of the case score this assertion carries.")

    def _outcome(self, passed: bool, message: str, observed: Any = None) -> Outcome:
        return Outcome(type=self.type, passed=passed, message=message,  # type: ignore[attr-defined]
                       weight=self.weight, path=getattr(self, "path", None), observed=observed)

    async def check(self, seen: Observation) -> Outcome:
        raise NotImplementedError


class _PathAssertion(_Base):
    path: str = Field(description="Dotted path into the output, e.g. 'items.0.sku'.")

    async def check(self, seen: Observation) -> Outcome:
        try:
            actual = resolve(seen.output, self.path)
        except PathMissing as exc:
            return self._outcome(False, str(exc))
        return await self._check_value(actual, seen)

    async def _check_value(self, actual: Any, seen: Observation) -> Outcome:
        raise NotImplementedError


class Equals(_PathAssertion):
    type: Literal["equals"]
    value: Any

    async def _check_value(self, actual: Any, seen: Observation) -> Outcome:
        if json_equal(actual, self.value):
            return self._outcome(True, "equal", actual)
        return self._outcome(False, f"expected {_show(self.value)}, got {_show(actual)}", actual)


class OneOf(_PathAssertion):
    type: Literal["one_of"]
    values: list[Any] = Field(min_length=1)

    async def _check_value(self, actual: Any, seen: Observation) -> Outcome:
        if any(json_equal(actual, v) for v in self.values):
            return self._outcome(True, "one of the allowed values", actual)
        allowed = ", ".join(_show(v) for v in self.values)
        return self._outcome(False, f"got {_show(actual)}, expected one of: {allowed}", actual)


class Contains(_PathAssertion):
    type: Literal["contains"]
    value: Any = Field(description="A substring of a string, or an element of a list.")
    case_sensitive: bool = False

    async def _check_value(self, actual: Any, seen: Observation) -> Outcome:
        fold = _folder(self.case_sensitive)
        if isinstance(actual, str):
            if not isinstance(self.value, str):
                return self._outcome(False, f"{self.path!r} is a string; a substring to look "
                                     f"for must be a string, not {type_name(self.value)}", actual)
            found = fold(self.value) in fold(actual)
        elif isinstance(actual, list):
            found = any(json_equal(fold(el), fold(self.value)) for el in actual)
        else:
            return self._outcome(False, f"{self.path!r} is {type_name(actual)}; contains "
                                 "needs a string or a list", actual)
        if found:
            return self._outcome(True, f"contains {_show(self.value)}", actual)
        return self._outcome(False, f"{_show(actual)} does not contain {_show(self.value)}", actual)


class Regex(_PathAssertion):
    type: Literal["regex"]
    pattern: str = Field(description="RE2 syntax (linear time); matches anywhere unless anchored.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        _compile(pattern)
        return pattern

    async def _check_value(self, actual: Any, seen: Observation) -> Outcome:
        if not isinstance(actual, str):
            return self._outcome(False, f"{self.path!r} is {type_name(actual)}; regex needs "
                                 "a string", actual)
        if _compile(self.pattern).search(actual) is not None:
            return self._outcome(True, f"matches /{self.pattern}/", actual)
        return self._outcome(False, f"{_show(actual)} does not match /{self.pattern}/", actual)


class Approx(_PathAssertion):
    type: Literal["approx"]
    value: float
    tolerance: float = Field(0.0, ge=0, description="Largest absolute difference allowed.")

    async def _check_value(self, actual: Any, seen: Observation) -> Outcome:
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return self._outcome(False, f"{self.path!r} is {type_name(actual)}; approx needs "
                                 "a number", actual)
        difference = abs(actual - self.value)
        if difference <= self.tolerance:
            return self._outcome(True, f"within {self.tolerance} of {self.value}", actual)
        return self._outcome(False, f"expected {self.value} ± {self.tolerance}, got {actual} "
                             f"(off by {difference:.6g})", actual)


class SetEquals(_PathAssertion):
    type: Literal["set_equals"]
    value: list[Any]
    case_sensitive: bool = False

    async def _check_value(self, actual: Any, seen: Observation) -> Outcome:
        if not isinstance(actual, list):
            return self._outcome(False, f"{self.path!r} is {type_name(actual)}; set_equals "
                                 "needs a list", actual)
        fold = _folder(self.case_sensitive)
        got = {_canonical(fold(v)) for v in actual}
        want = {_canonical(fold(v)) for v in self.value}
        if got == want:
            return self._outcome(True, "same elements", actual)
        parts = []
        if missing := sorted(want - got):
            parts.append(f"missing {', '.join(missing)}")
        if extra := sorted(got - want):
            parts.append(f"unexpected {', '.join(extra)}")
        return self._outcome(False, "; ".join(parts), actual)


class Similar(_PathAssertion):
    type: Literal["similar"]
    value: str = Field(description="Reference text the output should mean the same as.")
    threshold: float = Field(0.7, ge=-1.0, le=1.0, description="Minimum cosine similarity.")

    async def _check_value(self, actual: Any, seen: Observation) -> Outcome:
        if not isinstance(actual, str):
            return self._outcome(False, f"{self.path!r} is {type_name(actual)}; similar needs "
                                 "a string", actual)
        if seen.services.embedder is None:
            return self._outcome(False, "no embedding model configured for 'similar'")
        try:
            embedder = await seen.services.embedder()
        except SimilarityUnavailable as exc:
            return self._outcome(False, str(exc))
        vectors = await asyncio.to_thread(embedder.embed, [actual, self.value])
        similarity = cosine(vectors[0], vectors[1])
        if similarity >= self.threshold:
            return self._outcome(True, f"similarity {similarity:.3f} ≥ {self.threshold}",
                                 round(similarity, 4))
        return self._outcome(False, f"similarity {similarity:.3f} < {self.threshold} to "
                             f"{_show(self.value)}", round(similarity, 4))


class JudgeAssertion(_Base):
    type: Literal["judge"]
    rubric: str = Field(min_length=1, description="What a good output does, for the judge.")
    route: str = Field("judge", description="Route (featurelm.yaml) the judge model runs on.")
    min_score: float = Field(0.7, ge=0.0, le=1.0)

    async def check(self, seen: Observation) -> Outcome:
        judge = seen.services.judge
        if judge is None:
            return self._outcome(False, "no judge configured for 'judge' assertions")
        try:
            verdict = await judge.grade(rubric=self.rubric, route=self.route,
                                        feature=seen.feature, case_id=seen.case_id,
                                        input=seen.input, output=seen.output)
        except Exception as exc:  # a failed judge fails the assertion, never the whole run
            return self._outcome(False, f"judge failed: {type(exc).__name__}: {exc}")
        if verdict.score >= self.min_score:
            return self._outcome(True, f"judge score {verdict.score:.2f}: {verdict.reason}",
                                 verdict.score)
        return self._outcome(False, f"judge score {verdict.score:.2f} < {self.min_score}: "
                             f"{verdict.reason}", verdict.score)


class MaxLatency(_Base):
    type: Literal["max_latency_ms"]
    value: float = Field(gt=0)

    async def check(self, seen: Observation) -> Outcome:
        if seen.latency_ms <= self.value:
            return self._outcome(True, f"{seen.latency_ms:.0f} ms ≤ {self.value:g} ms",
                                 seen.latency_ms)
        return self._outcome(False, f"took {seen.latency_ms:.0f} ms, over {self.value:g} ms",
                             seen.latency_ms)


class MaxCost(_Base):
    type: Literal["max_cost_usd"]
    value: float = Field(ge=0)

    async def check(self, seen: Observation) -> Outcome:
        if seen.cost_usd <= self.value:
            return self._outcome(True, f"${seen.cost_usd:.6f} ≤ ${self.value:g}", seen.cost_usd)
        return self._outcome(False, f"cost ${seen.cost_usd:.6f}, over ${self.value:g}",
                             seen.cost_usd)


Assertion = Annotated[
    Equals | OneOf | Contains | Regex | Approx | SetEquals | Similar | JudgeAssertion
    | MaxLatency | MaxCost,
    Field(discriminator="type"),
]


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON means it: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def _folder(case_sensitive: bool) -> Callable[[Any], Any]:
    if case_sensitive:
        return lambda v: v
    return lambda v: v.casefold() if isinstance(v, str) else v


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _show(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@lru_cache(maxsize=512)
def _compile(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False  # the error is reported to the dataset author instead
    try:
        return re2.compile(pattern, options=options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"invalid RE2 pattern {pattern!r}: {detail}") from None
