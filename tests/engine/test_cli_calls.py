"""`featurelm calls list|show` and `featurelm run --explain`: the story of a call."""

from __future__ import annotations

import asyncio
import json

import pytest

from featurelm.cli import main
from featurelm.engine import Engine
from featurelm.engine.traces import request_id
from tests.conftest import ProjectFactory, scripted

REPLIES = scripted('{"sentiment": "great"}', '{"sentiment": "positive"}')


async def traced_call(config: str, rid: str) -> None:
    engine = Engine.from_config(config)
    token = request_id.set(rid)
    try:
        await engine.run("sentiment", {"text": "Love it"})
    finally:
        request_id.reset(token)
        await engine.aclose()  # stores the traces still queued


def test_calls_list_and_show_tell_what_went_out_and_came_back(
        make_project: ProjectFactory, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(make_project(backends={"primary": REPLIES},
                              extra={"traces": {"sample_rate": 1}}))
    asyncio.run(traced_call(config, "req-42"))
    assert main(["--config", config, "calls", "list", "--since", "1h"]) == 0
    assert "req-42\t-\tsentiment\tok" in capsys.readouterr().out
    assert main(["--config", config, "calls", "show", "req-42"]) == 0
    out = capsys.readouterr().out
    assert "call req-42: sentiment (v1), tenant -, route default: ok" in out
    assert "Review: Love it" in out
    assert "attempt 1 (backend primary): 1 error(s)" in out
    assert "attempt 2 (re-ask, backend primary): valid" in out
    assert 'output: {"sentiment": "positive"}' in out
    assert main(["--config", config, "calls", "show", "req-42", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["request_id"] == "req-42"
    assert main(["--config", config, "calls", "show", "nope"]) == 2
    assert "no traced call" in capsys.readouterr().err
    assert main(["--config", config, "calls", "list", "--since", "soon"]) == 2
    assert "since 'soon'" in capsys.readouterr().err


def test_run_explain_prints_the_story_of_a_failing_call(
        make_project: ProjectFactory, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(make_project(backends={"primary": scripted("I cannot answer that")}))
    code = main(["--config", config, "run", "sentiment", "--input", '{"text": "hm"}',
                 "--explain"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "prompt [user]:\n    Review: hm" in captured.err
    assert captured.err.count("I cannot answer that") == 3
    assert "the reply contained no JSON object" in captured.err
    assert "error: OutputError: no schema-valid output after 3 attempt(s)" in captured.err


def test_run_explain_still_prints_the_result_json(
        make_project: ProjectFactory, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(make_project(backends={"primary": REPLIES}))
    assert main(["--config", config, "run", "sentiment", "--input", '{"text": "a"}',
                 "--explain"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["output"] == {"sentiment": "positive"}
    assert "re-ask" in captured.err
