"""The self-contained HTML report: summary, plots as inline PNG, and every failing case in full.

Everything taken from a run (inputs, outputs, messages, names) is HTML-escaped by Jinja2's
autoescaping; the page loads nothing from anywhere and runs no script.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import struct
from typing import Any

import jinja2

from featurelm.evals.results import SuiteResult

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>featurelm eval: {{ "passed" if suite.passed else "FAILED" }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #212121; max-width: 1100px; }
h1 .pass, td.pass { color: #2e7d32; } h1 .fail, td.fail, li.fail { color: #c62828; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; vertical-align: top; }
td.num { text-align: right; }
.plots img { display: block; margin: 1rem 0; max-width: 100%; height: auto; }
pre { background: #f5f5f5; padding: .5rem; overflow-x: auto; max-height: 24rem; }
.case { border: 1px solid #e0e0e0; border-left: 4px solid #c62828; padding: .5rem 1rem;
        margin: 1rem 0; }
.meta { color: #616161; }
</style>
</head>
<body>
<h1>featurelm eval:
{% if suite.passed %}<span class="pass">passed</span>
{%- else %}<span class="fail">FAILED</span>{% endif %}</h1>
<p class="meta">
{% for key, value in run_info %}{{ key }}: <b>{{ value }}</b>
{%- if not loop.last %} · {% endif %}{% endfor %}
</p>
{% if suite.problems %}
<ul id="problems">
{% for p in suite.problems %}<li class="fail">{{ p }}</li>{% endfor %}
</ul>
{% endif %}
<table id="summary">
<tr><th>feature</th><th>status</th><th>pass rate</th><th>threshold</th><th>cases passed</th>
<th>flaky</th><th>mean latency</th><th>cost</th><th>note</th></tr>
{% for f in suite.features %}
<tr><td>{{ f.name }}</td>
<td class="{{ 'pass' if f.passed else 'fail' }}">{{ "PASS" if f.passed else "FAIL" }}</td>
<td class="num">{{ "%.1f%%" % (f.pass_rate * 100) }}</td>
<td class="num">{{ "%.0f%%" % (f.threshold * 100) }}</td>
<td class="num">{{ f.passed_cases }}/{{ f.cases|length }}</td>
<td class="num">{{ f.cases|selectattr("flaky")|list|length }}</td>
<td class="num">
{{- "%.0f ms" % f.mean_latency_ms if f.mean_latency_ms is not none else "-" -}}
</td>
<td class="num">${{ "%.6f" % f.cost_usd }}</td><td>{{ f.error or "" }}</td></tr>
{% endfor %}
</table>
<section class="plots">
<h2>Plots</h2>
{% if plots is none %}
<p class="note">Plots need matplotlib: <code>pip install 'featurelm[evals]'</code>.</p>
{% endif %}
{% for plot in plots or [] %}
<img id="{{ plot.id }}" alt="{{ plot.title }}" width="{{ plot.width }}"
     height="{{ plot.height }}" src="data:image/png;base64,{{ plot.data }}">
{% endfor %}
</section>
<section id="failing">
<h2>Failing cases ({{ failing|length }})</h2>
{% for f, c, run in failing %}
<div class="case">
<h3>{{ f.name }} / {{ c.id }}
{%- if c.flaky %} (flaky: passed {{ c.runs|selectattr("passed")|list|length }}
of {{ c.runs|length }} runs){% endif %}</h3>
{% if run.error %}<p class="fail">error ({{ run.error_kind }}): {{ run.error }}</p>{% endif %}
{% if run.failed_outcomes %}
<table class="failed-assertions">
<tr><th>assertion</th><th>path</th><th>weight</th><th>why it failed</th></tr>
{% for o in run.failed_outcomes %}
<tr><td>{{ o.type }}</td><td>{{ o.path or "" }}</td><td class="num">{{ o.weight }}</td>
<td>{{ o.message }}</td></tr>
{% endfor %}
</table>
{% endif %}
<h4>Input</h4><pre>{{ dump(c.input) }}</pre>
<h4>Output</h4><pre>{{ dump(run.output) if run.output is not none else "(no output)" }}</pre>
{% if run.meta %}
<p class="meta">{% for k, v in run.meta|dictsort %}{{ k }}={{ v }} {% endfor %}</p>
{% endif %}
</div>
{% endfor %}
</section>
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def render(suite: SuiteResult) -> str:
    def plot(plot_id: str, title: str, png: bytes) -> dict[str, Any]:
        # PNG IHDR holds the pixel size; giving it to <img> keeps the layout stable.
        width, height = struct.unpack(">II", png[16:24])
        return {"id": plot_id, "title": title, "width": width, "height": height,
                "data": base64.b64encode(png).decode("ascii")}

    features = suite.features
    rendered_plots: list[dict[str, Any]] | None = None
    if plots_available():
        from featurelm.evals.reports import plots

        rendered_plots = [
            plot("plot-pass-rate", "Pass rate per feature", plots.pass_rates(features)),
            plot("plot-latency", "Latency distribution", plots.latency_distribution(features)),
            plot("plot-cost", "Cost per case", plots.cost_per_case(features)),
        ]
    failing = [(f, c, c.first_failure) for f in features for c in f.cases if not c.passed]
    run_info = [(k, suite.meta[k]) for k in ("mode", "tenant", "route", "repeat", "started_at",
                                              "duration_s", "featurelm_version")
                if suite.meta.get(k) not in (None, "")]
    return _ENV.from_string(_TEMPLATE).render(suite=suite, plots=rendered_plots,
                                              failing=failing, run_info=run_info, dump=_dump)


def plots_available() -> bool:
    """Plots come with the `evals` extra (matplotlib); a plain install writes reports without."""
    return importlib.util.find_spec("matplotlib") is not None


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
