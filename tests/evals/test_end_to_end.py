"""`featurelm eval` end to end: a feature project, a dataset, a model, the CLI entry point.

The model is a fake adapter registered like any backend kind: it classifies tickets correctly
only when the system prompt asks for classification by topic, so editing that prompt is a real
regression the suite must catch, live and in replay.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from featurelm.cli import build_parser
from featurelm.engine.backends import register
from featurelm.engine.backends.scripted import ScriptedBackend
from featurelm.engine.config import BackendConfig
from featurelm.engine.engine import Engine
from featurelm.engine.types import CompletionRequest
from featurelm.evals.cli import run
from tests.conftest import ProjectFactory

SECRET = "sk-test-abcdefghijklmnop1234"
GOOD_PROMPT = "Classify the support ticket by topic: billing, technical or other."
BROKEN_PROMPT = "Classify the support ticket."

CLASSIFY: dict[str, Any] = {
    "name": "classify_ticket",
    "input": {"type": "object", "required": ["text"], "additionalProperties": False,
              "properties": {"text": {"type": "string"}}},
    "output": {"type": "object", "required": ["category", "summary"],
               "additionalProperties": False,
               "properties": {"category": {"enum": ["billing", "technical", "other"]},
                              "summary": {"type": "string"}}},
    "prompt": {"system": GOOD_PROMPT, "user": "Ticket: {{ text }}"},
    "evals": {"threshold": 0.75},
}

CASES = [
    {"id": "refund-request", "input": {"text": "I want a refund for a double charge"},
     "assert": [{"type": "equals", "path": "category", "value": "billing"},
                {"type": "contains", "path": "summary", "value": "REFUND"},
                {"type": "max_latency_ms", "value": 10000}]},
    {"id": "app-crash", "input": {"text": "The app crashes on start"},
     "assert": [{"type": "one_of", "path": "category", "values": ["technical"]},
                {"type": "regex", "path": "summary", "pattern": "crash(es)?"}]},
    {"id": "thanks", "input": {"text": f"Thanks! PS my key is {SECRET}"},
     "assert": [{"type": "equals", "path": "category", "value": "other"}]},
    {"id": "invoice-total", "input": {"text": "My invoice total is charged twice"},
     "assert": [{"type": "equals", "path": "category", "value": "billing"},
                {"type": "judge", "rubric": "Is the summary faithful to the ticket?",
                 "route": "judge", "min_score": 0.8}]},
]


def ticket_model(request: CompletionRequest) -> str:
    system = request.messages[0].content
    if system.startswith("You grade the output"):
        return json.dumps({"score": 0.9, "reason": "The summary restates the ticket."})
    text = request.messages[-1].content.removeprefix("Ticket: ")
    category = "other"
    if "by topic" in system:
        if any(word in text for word in ("refund", "charge", "invoice")):
            category = "billing"
        elif "crash" in text:
            category = "technical"
    return json.dumps({"category": category, "summary": f"Customer says: {text}"})


@register("eval_ticket_model")
def _ticket_model(name: str, config: BackendConfig) -> ScriptedBackend:
    return ScriptedBackend(ticket_model, name=name, model=config.model)


MODEL = {"kind": "eval_ticket_model", "model": "ticket-1"}
#: Same name and model as MODEL, but it fails any call: replay must never reach it.
NO_MODEL = {"kind": "scripted", "model": "ticket-1", "options": {"replies": []}}
ROUTES = {"default": {"backends": ["model"]}, "judge": {"backends": ["model"]}}


@pytest.fixture
def project(make_project: ProjectFactory, tmp_path: Path) -> Path:
    config = make_project([CLASSIFY], backends={"model": MODEL}, routes=ROUTES)
    datasets = tmp_path / "evals" / "datasets"
    datasets.mkdir(parents=True)
    (datasets / "classify_ticket.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in CASES))
    return config


def set_prompt(config: Path, system: str) -> None:
    feature = copy.deepcopy(CLASSIFY)
    feature["prompt"]["system"] = system
    (config.parent / "features" / "classify_ticket.yaml").write_text(yaml.safe_dump(feature))


def set_backend(config: Path, backend: dict[str, Any]) -> None:
    data = yaml.safe_load(config.read_text())
    data["backends"]["model"] = backend
    config.write_text(yaml.safe_dump(data))


async def featurelm_eval(*argv: str | Path) -> int:
    return await run(build_parser().parse_args(["eval", *(str(a) for a in argv)]))


async def test_a_passing_suite_exits_0_and_writes_all_three_reports(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reports = tmp_path / "out"
    assert await featurelm_eval("--config", project, "--report", reports) == 0
    assert "classify_ticket: PASS 4/4 cases passed, pass rate 100.0% (threshold 75%)" in \
        capsys.readouterr().out
    data = json.loads((reports / "report.json").read_text())
    assert data["passed"] is True and data["meta"]["mode"] == "live"
    [feature] = data["features"]
    assert [c["id"] for c in feature["cases"]] == [c["id"] for c in CASES]
    run_meta = feature["cases"][0]["runs"][0]["meta"]
    assert (run_meta["backend"], run_meta["model"], run_meta["cached"]) == \
        ("model", "ticket-1", False)
    judged = feature["cases"][3]["runs"][0]["outcomes"][1]
    assert (judged["type"], judged["passed"], judged["observed"]) == ("judge", True, 0.9)
    assert "✅ featurelm eval passed" in (reports / "report.md").read_text()
    assert (reports / "report.html").read_text().count("data:image/png;base64,") == 3


async def test_a_broken_prompt_makes_the_suite_fail(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_prompt(project, BROKEN_PROMPT)
    reports = tmp_path / "out"
    assert await featurelm_eval("--config", project, "--report", reports) == 1
    assert "classify_ticket: FAIL 1/4 cases passed, pass rate 25.0% (threshold 75%)" in \
        capsys.readouterr().out
    markdown = (reports / "report.md").read_text()
    assert "### Failing cases (3)" in markdown
    assert '- equals `category`: expected "billing", got "other"' in markdown


async def test_record_then_replay_without_any_backend_call(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cassettes = tmp_path / "cassettes"
    assert await featurelm_eval("--config", project, "--record", cassettes) == 0
    cassette = cassettes / "classify_ticket.json"
    text = cassette.read_text()
    assert SECRET not in text
    exchanges = json.loads(text)["exchanges"].values()
    # Four feature calls and one judge call, each filed under its case.
    assert sorted(e["case"] for e in exchanges) == sorted(
        [c["id"] for c in CASES] + ["invoice-total"])

    set_backend(project, NO_MODEL)
    reports = tmp_path / "replayed"
    assert await featurelm_eval("--config", project, "--replay", cassettes,
                                "--report", reports) == 0
    data = json.loads((reports / "report.json").read_text())
    assert data["meta"]["mode"] == "replay" and data["passed"] is True
    assert "classify_ticket: PASS 4/4" in capsys.readouterr().out


async def test_replay_fails_naming_the_case_when_a_request_was_never_recorded(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cassettes = tmp_path / "cassettes"
    assert await featurelm_eval("--config", project, "--record", cassettes) == 0
    set_backend(project, NO_MODEL)
    set_prompt(project, GOOD_PROMPT + " Be brief.")
    assert await featurelm_eval("--config", project, "--replay", cassettes) == 1
    err = capsys.readouterr().err
    assert ("error: replay: no recording for case 'refund-request' of feature "
            "'classify_ticket' (backend 'model', model 'ticket-1')") in err


async def test_a_broken_prompt_fails_in_replay_once_its_answers_are_recorded(
        project: Path, tmp_path: Path) -> None:
    cassettes = tmp_path / "cassettes"
    set_prompt(project, BROKEN_PROMPT)
    assert await featurelm_eval("--config", project, "--record", cassettes) == 1
    set_backend(project, NO_MODEL)
    assert await featurelm_eval("--config", project, "--replay", cassettes) == 1


async def test_comparing_two_reports_shows_the_regression(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await featurelm_eval("--config", project, "--report", tmp_path / "before") == 0
    set_prompt(project, BROKEN_PROMPT)
    assert await featurelm_eval("--config", project, "--report", tmp_path / "after") == 1
    capsys.readouterr()
    code = await featurelm_eval("--compare", tmp_path / "before" / "report.json",
                                tmp_path / "after" / "report.json",
                                "--report", tmp_path / "diff")
    assert code == 1
    out = capsys.readouterr().out
    assert "| classify_ticket | 100.0% | 25.0% | -75.0% |" in out
    for case in ("refund-request", "app-crash", "invoice-total"):
        assert f"- classify_ticket / {case}: **pass->fail**" in out
    comparison = json.loads((tmp_path / "diff" / "comparison.json").read_text())
    assert comparison["passed"] is False
    assert (tmp_path / "diff" / "comparison.md").read_text() == out.rstrip("\n") + "\n"


async def test_comparing_base_with_a_tenant_runs_both(project: Path, tmp_path: Path) -> None:
    engine = Engine.from_config(project)
    try:
        await (await engine.store()).create_tenant("acme", actor="test")
    finally:
        await engine.aclose()
    code = await featurelm_eval("--config", project, "--compare", "base", "tenant:acme",
                                "--report", tmp_path / "cmp")
    assert code == 0
    a = json.loads((tmp_path / "cmp" / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "cmp" / "b" / "report.json").read_text())
    assert (a["meta"]["tenant"], b["meta"]["tenant"]) == (None, "acme")
    assert b["features"][0]["cases"][0]["runs"][0]["meta"]["tenant"] == "acme"


@pytest.mark.parametrize(("argv", "message"), [
    (["nope"], "unknown feature(s): nope (known: classify_ticket)"),
    (["--compare", "base", "tenant"], "give a report.json file, 'base', 'tenant:NAME'"),
    (["--replay", "/nonexistent/cassettes"], "no such cassette directory"),
])
async def test_usage_errors_exit_2_with_a_message(
        project: Path, argv: list[str], message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert await featurelm_eval("--config", project, *argv) == 2
    assert message in capsys.readouterr().err


async def test_a_named_feature_without_a_dataset_fails(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "evals" / "datasets" / "classify_ticket.jsonl").unlink()
    assert await featurelm_eval("--config", project) == 1
    assert "no feature has an eval dataset" in capsys.readouterr().err
    assert await featurelm_eval("--config", project, "classify_ticket") == 1
    assert "classify_ticket: FAIL (no eval dataset" in capsys.readouterr().out


async def test_a_route_that_does_not_exist_is_a_usage_error(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await featurelm_eval("--config", project, "--route", "nosuch") == 2
    out, err = capsys.readouterr()
    assert out == ""  # no case was run, none reported failed
    assert err.strip().splitlines() == [
        f"error: --route nosuch: no such route in {project.parent} (routes: default, judge)"]


async def test_compare_labels_each_side_of_its_output(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The same run twice: only the side labels tell the two summary lines apart.
    assert await featurelm_eval("--config", project, "--compare", "base", "base") == 0
    out = capsys.readouterr().out
    assert "[a: base] classify_ticket: PASS" in out
    assert "[b: base] classify_ticket: PASS" in out


async def test_a_recording_writes_a_baseline_and_the_replay_gates_on_it(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cassettes = tmp_path / "cassettes"
    assert await featurelm_eval("--config", project, "--record", cassettes) == 0
    baseline = json.loads((cassettes / "baseline.json").read_text())
    assert [c["passed"] for c in baseline["features"][0]["cases"]] == [True] * 4
    set_backend(project, NO_MODEL)
    assert await featurelm_eval("--config", project, "--replay", cassettes) == 0
    # The recorded answer for one case changes: that case is the regression reported.
    path = cassettes / "classify_ticket.json"
    cassette = json.loads(path.read_text())
    for exchange in cassette["exchanges"].values():
        if exchange["case"] == "app-crash":
            exchange["replies"] = [{**r, "text": json.dumps(
                {"category": "other", "summary": "crash"})} for r in exchange["replies"]]
    path.write_text(json.dumps(cassette))
    capsys.readouterr()
    assert await featurelm_eval("--config", project, "--replay", cassettes) == 1
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "regression" in line]
    assert line.startswith("error: regression: case 'app-crash' of feature 'classify_ticket' "
                           "passed in the baseline")
    assert 'input {"text": "The app crashes on start"}' in line
    assert "one_of at category" in line


async def test_a_recorded_run_is_held_to_the_replay_threshold(
        project: Path, tmp_path: Path) -> None:
    set_prompt(project, BROKEN_PROMPT)  # 1 of 4 cases passes: below the live threshold 0.75
    assert await featurelm_eval("--config", project) == 1
    feature = yaml.safe_load((project.parent / "features" / "classify_ticket.yaml").read_text())
    feature["evals"]["replay_threshold"] = 0.25
    (project.parent / "features" / "classify_ticket.yaml").write_text(yaml.safe_dump(feature))
    assert await featurelm_eval("--config", project, "--record", tmp_path / "c") == 0
    assert await featurelm_eval("--config", project) == 1  # live still uses the threshold


async def test_a_refused_gated_override_lists_the_failing_cases(project: Path) -> None:
    from featurelm.engine.errors import ContractError
    from featurelm.evals.gate import make_eval_gate

    feature = copy.deepcopy(CLASSIFY)
    feature["overridable"] = ["prompt.system"]
    (project.parent / "features" / "classify_ticket.yaml").write_text(yaml.safe_dump(feature))
    engine = Engine.from_config(project)
    engine.set_eval_gate(make_eval_gate(engine))
    try:
        await (await engine.store()).create_tenant("acme", actor="test")
        with pytest.raises(ContractError) as refused:
            await engine.overrides.apply("acme", "classify_ticket",
                                         f"prompt:\n  system: {BROKEN_PROMPT}\n",
                                         author="test", run_evals=True)
    finally:
        await engine.aclose()
    issues = [str(i) for i in refused.value.issues]
    assert "eval pass rate 25% is below the threshold 75%: 3 of 4 cases fail" in issues[0]
    failing = {i.path for i in refused.value.issues[1:]}
    assert failing == {"evals: case 'refund-request'", "evals: case 'app-crash'",
                       "evals: case 'invoice-total'"}
    crash = next(i for i in refused.value.issues if "app-crash" in i.path)
    assert 'input {"text": "The app crashes on start"}' in crash.problem
    assert "one_of at category" in crash.problem
