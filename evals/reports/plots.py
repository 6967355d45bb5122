"""The report's plots (pass rate per feature, latency distribution, cost per case) as PNG bytes.

Drawn with matplotlib's Agg canvas directly, without pyplot, so no global figure state is shared
between runs or threads.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from featurelm.evals.results import FeatureResult

PASS_COLOR = "#2e7d32"
FAIL_COLOR = "#c62828"
SERIES_COLORS = ["#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#558b2f", "#4e342e"]
MAX_LABELLED_CASES = 40
#: Width (in pass-rate percent) of the stub drawn for a 0% feature, so its red bar is seen.
ZERO_BAR_PERCENT = 1.0


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Case ids are free text; a glyph the font lacks must not abort the report.
        warnings.filterwarnings("ignore", message="Glyph .* missing", category=UserWarning)
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def pass_rates(features: Sequence[FeatureResult]) -> bytes:
    """Horizontal bars, green at or above the feature's threshold, red below; ticks mark it."""
    names = [f.name for f in features]
    figure = Figure(figsize=(7, 0.45 * len(features) + 1.3))
    axes = figure.add_subplot()
    positions = list(range(len(features)))
    rates = [f.pass_rate * 100 for f in features]
    axes.barh(positions, [max(rate, ZERO_BAR_PERCENT) for rate in rates],
              color=[PASS_COLOR if f.passed else FAIL_COLOR for f in features])
    axes.scatter([f.threshold * 100 for f in features], positions, marker="|", s=400,
                 color="black", zorder=3)
    # The number beside each bar: a 0% bar is a stub, and its label says it is 0%.
    for position, rate, feature in zip(positions, rates, features, strict=True):
        axes.text(min(max(rate, ZERO_BAR_PERCENT) + 1.5, 88), position,
                  f"{rate:.0f}% ({feature.passed_cases}/{len(feature.cases)})",
                  va="center", fontsize="small")
    axes.set_yticks(positions, names)
    axes.invert_yaxis()
    axes.set_xlim(0, 100)
    axes.set_xlabel("pass rate (%)")
    axes.set_title("Pass rate per feature (black tick: threshold)")
    return _png(figure)


def latency_distribution(features: Sequence[FeatureResult]) -> bytes:
    """Histogram of per-run latency, one stacked series per feature."""
    series = [(f.name, f.latencies_ms) for f in features if f.latencies_ms]
    figure = Figure(figsize=(7, 3.2))
    axes = figure.add_subplot()
    if series:
        axes.hist([values for _, values in series], bins=20, stacked=True,
                  label=[name for name, _ in series],
                  color=[SERIES_COLORS[i % len(SERIES_COLORS)] for i in range(len(series))])
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "no latency recorded", ha="center", va="center",
                  transform=axes.transAxes)
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("runs")
    axes.set_title("Latency distribution")
    return _png(figure)


def cost_per_case(features: Sequence[FeatureResult]) -> bytes:
    """Mean cost of each case's runs, coloured by feature; a plain note when nothing cost."""
    labels: list[str] = []
    costs: list[float] = []
    colors: list[str] = []
    #: (position of the feature's first case, its name), for the ticks of a long run.
    groups: list[tuple[float, str]] = []
    for index, feature in enumerate(features):
        if feature.cases:
            groups.append((len(labels) + (len(feature.cases) - 1) / 2, feature.name))
        for case in feature.cases:
            labels.append(f"{feature.name}/{case.id}")
            costs.append(case.cost_usd or 0.0)
            colors.append(SERIES_COLORS[index % len(SERIES_COLORS)])
    axes: Any
    if not any(costs):
        # An axis of zeros says nothing, and matplotlib would draw it as -0.04..0.04.
        figure = Figure(figsize=(7, 1.2))
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, f"No cost recorded: all {len(costs)} cases cost $0 "
                            "(a local or self-hosted model).",
                  ha="center", va="center", transform=axes.transAxes)
        axes.set_title("Cost per case")
        return _png(figure)
    figure = Figure(figsize=(7, 3.4))
    axes = figure.add_subplot()
    positions = list(range(len(costs)))
    axes.bar(positions, costs, color=colors)
    axes.set_ylim(bottom=0)
    if len(labels) <= MAX_LABELLED_CASES:
        axes.set_xticks(positions, labels, rotation=60, ha="right", fontsize="x-small")
        axes.set_xlabel("case (feature/case id)")
    else:
        # Too many cases to name: name each feature under its group of bars.
        axes.set_xticks([p for p, _ in groups], [n for _, n in groups], rotation=30,
                        ha="right", fontsize="small")
        axes.set_xlabel(f"{len(labels)} cases, grouped by feature")
    axes.set_ylabel("USD per run")
    axes.set_title("Cost per case")
    return _png(figure)
