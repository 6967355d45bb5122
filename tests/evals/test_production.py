"""`featurelm dataset from-calls`: traced calls with feedback become eval cases that
`featurelm eval` runs."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from featurelm.cli import main
from featurelm.engine import Engine
from featurelm.engine.store import Feedback
from featurelm.engine.traces import request_id
from tests.conftest import ProjectFactory


async def traced_calls_with_feedback(config: str) -> None:
    engine = Engine.from_config(config)
    try:
        for rid, text in (("corrected", "a"), ("disliked", "b"), ("untouched", "c")):
            token = request_id.set(rid)
            try:
                await engine.run("sentiment", {"text": text})
            finally:
                request_id.reset(token)
        await engine.flush_traces()
        store = await engine.store()
        now = datetime.now(UTC)
        await store.add_feedback(Feedback("corrected", None, "sentiment", None, 0.0, None,
                                          '{"sentiment": "positive"}', "", "test", now))
        await store.add_feedback(Feedback("disliked", None, "sentiment", None, 0.1, None, None,
                                          "off", "test", now))
    finally:
        await engine.aclose()


def test_a_dataset_from_calls_with_feedback_runs_in_eval(
        make_project: ProjectFactory, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = str(make_project(extra={"traces": {"sample_rate": 1}}))
    asyncio.run(traced_calls_with_feedback(config))
    out = tmp_path / "evals" / "datasets" / "sentiment.jsonl"
    assert main(["--config", config, "dataset", "from-calls", "sentiment", "--since", "1d",
                 "--with-feedback", "-o", str(out)]) == 0
    assert "2 case(s)" in capsys.readouterr().err
    cases = [json.loads(line) for line in out.read_text().splitlines()]
    assert cases == [
        {"id": "corrected", "input": {"text": "a"},
         "assert": [{"type": "equals", "path": "sentiment", "value": "positive"}]},
        {"id": "review-disliked", "input": {"text": "b"}, "assert": []}]
    assert main(["--config", config, "eval", "sentiment"]) == 0
    capsys.readouterr()
    # Without --with-feedback the untouched call is a snapshot of the output it gave.
    assert main(["--config", config, "dataset", "from-calls", "sentiment", "-o",
                 str(out)]) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == \
        ["corrected", "review-disliked", "untouched"]


def test_an_unknown_feature_is_one_line_and_exit_2(
        make_project: ProjectFactory, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = str(make_project())
    assert main(["--config", config, "dataset", "from-calls", "nope", "-o",
                 str(tmp_path / "x.jsonl")]) == 2
    assert "unknown feature 'nope'" in capsys.readouterr().err
