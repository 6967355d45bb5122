"""The report's plots (pass rate per feature, latency distribution, cost per case) as PNG bytes.

Drawn with matplotlib's Agg canvas directly, without pyplot, so no global figure state is shared
between runs or threads.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from featurelm.evals.results import FeatureResult

PASS_COLOR = "#2e7d32"
FAIL_COLOR = "#c62828"
SERIES_COLORS = ["#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#558b2f", "#4e342e"]
MAX_LABELLED_CASES = 40


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
    axes.barh(positions, [f.pass_rate * 100 for f in features],
              color=[PASS_COLOR if f.passed else FAIL_COLOR for f in features])
    axes.scatter([f.threshold * 100 for f in features], positions, marker="|", s=400,
                 color="black", zorder=3)
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
    """Mean cost of each case's runs, coloured by feature."""
    labels: list[str] = []
    costs: list[float] = []
    colors: list[str] = []
    for index, feature in enumerate(features):
        for case in feature.cases:
            labels.append(f"{feature.name}/{case.id}")
            costs.append(case.cost_usd or 0.0)
            colors.append(SERIES_COLORS[index % len(SERIES_COLORS)])
    figure = Figure(figsize=(7, 3.4))
    axes = figure.add_subplot()
    positions = list(range(len(costs)))
    axes.bar(positions, costs, color=colors)
    if len(labels) <= MAX_LABELLED_CASES:
        axes.set_xticks(positions, labels, rotation=60, ha="right", fontsize="x-small")
    else:
        axes.set_xlabel(f"{len(labels)} cases")
    if not any(costs):
        axes.text(0.5, 0.5, "no cost recorded (all $0)", ha="center", va="center",
                  transform=axes.transAxes)
    axes.set_ylabel("USD per run")
    axes.set_title("Cost per case")
    return _png(figure)
