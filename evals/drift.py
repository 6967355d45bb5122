"""`featurelm drift FEATURE --since 7d`: has production moved away from the eval dataset?

For each enum-valued output field (expected values from the cases' `equals` and `one_of`
assertions) and
for input size, the population stability index (PSI) between the eval dataset and the traced
production calls. PSI above the threshold (0.2 by default: a significant shift) exits 1, so a
scheduled job can alert on it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Share given to a category one side never saw, so PSI stays finite.
EPSILON = 1e-4
DEFAULT_THRESHOLD = 0.2
SIZE_BINS = 5


def psi(expected: Mapping[str, float], actual: Mapping[str, float]) -> float:
    """Population stability index of `actual` against `expected` (counts per category)."""
    total_e, total_a = sum(expected.values()), sum(actual.values())
    if not total_e or not total_a:
        return 0.0
    value = 0.0
    for key in set(expected) | set(actual):
        e = max(expected.get(key, 0) / total_e, EPSILON)
        a = max(actual.get(key, 0) / total_a, EPSILON)
        value += (a - e) * math.log(a / e)
    return round(value, 4)


def enum_fields(schema: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Top-level output properties with an `enum`: name -> allowed values."""
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    return {name: list(sub["enum"]) for name, sub in properties.items()
            if isinstance(sub, Mapping) and isinstance(sub.get("enum"), list)}


def input_size(value: Any) -> int:
    return len(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def size_edges(sizes: Sequence[int], bins: int = SIZE_BINS) -> list[int]:
    """Upper edges of `bins` equally filled bins of the reference sizes."""
    ordered = sorted(sizes)
    if not ordered:
        return []
    return sorted({ordered[min(len(ordered) - 1, (len(ordered) * i) // bins)]
                   for i in range(1, bins)})


def size_bins(sizes: Iterable[int], edges: Sequence[int]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for size in sizes:
        index = next((i for i, edge in enumerate(edges) if size <= edge), len(edges))
        counts[str(index)] += 1
    return counts


def expected_values(cases: Iterable[Any], field: str) -> tuple[dict[str, float], int]:
    """The values the cases expect at top-level `field`, and how many cases say: a case's
    `equals` counts 1 for its value; a `one_of` (no `equals`) 1/n for each of its n values,
    since any of them passes."""
    counts: dict[str, float] = {}
    cases_seen = 0
    for case in cases:
        at_field = [a for a in case.assertions if getattr(a, "path", None) == field]
        equals = [a for a in at_field if getattr(a, "type", None) == "equals"]
        one_of = [a for a in at_field if getattr(a, "type", None) == "one_of"]
        if equals:
            values = [equals[0].value]
        elif one_of:
            values = list(one_of[0].values)
        else:
            continue
        cases_seen += 1
        for value in values:
            key = json.dumps(value)
            counts[key] = counts.get(key, 0.0) + 1 / len(values)
    return counts, cases_seen


@dataclass(frozen=True)
class FieldDrift:
    field: str
    psi: float
    reference: int
    production: int


def compare(schema: Mapping[str, Any], cases: Sequence[Any],
            outputs: Sequence[Mapping[str, Any]], inputs: Sequence[Any]) -> list[FieldDrift]:
    """PSI per enum field and for input size: eval `cases` against production calls."""
    found: list[FieldDrift] = []
    for field, _values in enum_fields(schema).items():
        reference, reference_cases = expected_values(cases, field)
        actual = Counter(json.dumps(o[field]) for o in outputs if field in o)
        found.append(FieldDrift(field, psi(reference, actual), reference_cases,
                                sum(actual.values())))
    reference_sizes = [input_size(c.input) for c in cases]
    edges = size_edges(reference_sizes)
    found.append(FieldDrift("input size", psi(size_bins(reference_sizes, edges),
                                              size_bins((input_size(i) for i in inputs), edges)),
                            len(reference_sizes), len(inputs)))
    return found


async def drift_command(args: argparse.Namespace) -> int:
    from featurelm.engine.engine import Engine
    from featurelm.engine.errors import InputError, NotFoundError
    from featurelm.engine.traces import parse_since
    from featurelm.evals.dataset import load_dataset
    from featurelm.evals.harness import target_for
    from featurelm.evals.production import collect

    engine = Engine.from_config(args.config)
    try:
        feature = engine.feature(args.feature)
        if feature is None:
            raise NotFoundError(f"unknown feature {args.feature!r}")
        target = target_for(engine, feature)
        if target.dataset is None:
            raise InputError(f"{args.feature} has no eval dataset to compare against")
        cases = load_dataset(target.dataset).cases
        traces, _ = await collect(await engine.store(), args.feature, tenant=args.tenant,
                                  since=parse_since(args.since))
    finally:
        await engine.aclose()
    ok = [t for t in traces if t.get("status") == "ok" and not t.get("truncated")]
    if not ok:
        print(f"error: no traced calls of {args.feature} since {args.since} (is traces: "
              "sample_rate set?)", file=sys.stderr)
        return 2
    outputs = [t["output"] for t in ok if isinstance(t.get("output"), dict)]
    drifted = False
    print("field\tpsi\treference\tproduction\tstatus")
    for row in compare(feature.spec.output, cases, outputs, [t.get("input") for t in ok]):
        over = row.psi > args.threshold
        drifted = drifted or over
        print(f"{row.field}\t{row.psi}\t{row.reference}\t{row.production}\t"
              f"{'DRIFT' if over else 'ok'}")
    return 1 if drifted else 0


def add_commands(commands: Any, config: argparse.ArgumentParser) -> None:
    import asyncio

    drift = commands.add_parser(
        "drift", help="compare production calls with the eval dataset (PSI per field)")
    drift.add_argument("feature")
    drift.add_argument("--since", default="7d", help="7d, 24h, ... or an ISO 8601 time")
    drift.add_argument("--tenant", help="only this tenant's calls")
    drift.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                       help="PSI above which a field has drifted (exit status 1)")
    drift.set_defaults(handler=lambda a: asyncio.run(drift_command(a)))
