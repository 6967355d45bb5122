"""`featurelm drift`: PSI per enum output field and input size, production against the eval
dataset; a shifted label distribution exits 1, an unshifted one 0."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from featurelm.cli import main
from featurelm.engine import Engine
from featurelm.evals.dataset import load_dataset
from featurelm.evals.drift import expected_values, psi, size_bins, size_edges
from tests.conftest import ProjectFactory, scripted

TEXTS = [f"review number {i}" for i in range(10)]
LABELS = ["positive", "negative"] * 5


def write_dataset(root: Path) -> None:
    lines = [json.dumps({"id": f"c{i}", "input": {"text": text}, "assert": [
        {"type": "equals", "path": "sentiment", "value": label}]})
        for i, (text, label) in enumerate(zip(TEXTS, LABELS, strict=True))]
    (root / "evals" / "datasets").mkdir(parents=True)
    (root / "evals" / "datasets" / "sentiment.jsonl").write_text("\n".join(lines) + "\n")


async def production(config: Path) -> None:
    engine = Engine.from_config(config)
    try:
        for text in TEXTS:
            await engine.run("sentiment", {"text": text})
    finally:
        await engine.aclose()


def project(make_project: ProjectFactory, replies: list[str]) -> Path:
    config = make_project(backends={"primary": scripted(*replies)},
                          extra={"traces": {"sample_rate": 1}})
    write_dataset(config.parent)
    asyncio.run(production(config))
    return config


def test_a_shifted_label_distribution_is_flagged(
        make_project: ProjectFactory, capsys: pytest.CaptureFixture[str]) -> None:
    config = project(make_project, ['{"sentiment": "positive"}'])
    assert main(["--config", str(config), "drift", "sentiment", "--since", "1h"]) == 1
    rows = {line.split("\t")[0]: line.split("\t") for line in
            capsys.readouterr().out.splitlines()[1:]}
    assert rows["sentiment"][4] == "DRIFT" and float(rows["sentiment"][1]) > 0.2
    assert rows["input size"][4] == "ok"


def test_an_unshifted_distribution_passes(
        make_project: ProjectFactory, capsys: pytest.CaptureFixture[str]) -> None:
    config = project(make_project, [json.dumps({"sentiment": label}) for label in LABELS])
    assert main(["--config", str(config), "drift", "sentiment"]) == 0
    out = capsys.readouterr().out
    assert "sentiment\t0.0\t10\t10\tok" in out


@pytest.mark.parametrize(("replies", "status", "code"), [
    (["neutral", "positive"] * 5, "ok", 0),  # the answers the cases allow, evenly
    (["negative"], "DRIFT", 1),          # a label no case allows
])
def test_one_of_assertions_count_as_expected_values_too(
        make_project: ProjectFactory, capsys: pytest.CaptureFixture[str], replies: list[str],
        status: str, code: int) -> None:
    config = project(make_project, [json.dumps({"sentiment": r}) for r in replies])
    lines = [json.dumps({"id": f"c{i}", "input": {"text": text}, "assert": [
        {"type": "one_of", "path": "sentiment", "values": ["neutral", "positive"]}]})
        for i, text in enumerate(TEXTS)]
    (config.parent / "evals" / "datasets" / "sentiment.jsonl").write_text("\n".join(lines))
    assert main(["--config", str(config), "drift", "sentiment"]) == code
    row = next(line.split("\t") for line in capsys.readouterr().out.splitlines()
               if line.startswith("sentiment\t"))
    assert row[2] == "10"  # all ten cases speak about the field
    assert row[4] == status


def test_equals_wins_over_one_of_and_other_assertions_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in [
        {"id": "a", "input": {}, "assert": [
            {"type": "one_of", "path": "sentiment", "values": ["positive", "neutral"]},
            {"type": "equals", "path": "sentiment", "value": "positive"}]},
        {"id": "b", "input": {}, "assert": [
            {"type": "one_of", "path": "sentiment", "values": ["negative", "neutral"]}]},
        {"id": "c", "input": {}, "assert": [
            {"type": "regex", "path": "sentiment", "pattern": "^pos"}]},
    ]))
    counts, cases = expected_values(load_dataset(path).cases, "sentiment")
    assert cases == 2
    assert counts == {'"positive"': 1.0, '"negative"': 0.5, '"neutral"': 0.5}


def test_no_traced_calls_is_exit_2(make_project: ProjectFactory,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = make_project()
    write_dataset(config.parent)
    assert main(["--config", str(config), "drift", "sentiment"]) == 2
    assert "no traced calls" in capsys.readouterr().err


def test_psi_is_zero_for_equal_distributions_and_grows_with_the_shift() -> None:
    same = psi({"a": 50, "b": 50}, {"a": 5, "b": 5})
    small = psi({"a": 50, "b": 50}, {"a": 6, "b": 4})
    large = psi({"a": 50, "b": 50}, {"a": 9, "b": 1})
    assert same == 0.0 < small < 0.1 < 0.2 < large
    assert psi({}, {"a": 1}) == 0.0


def test_input_sizes_are_binned_on_the_reference_quantiles() -> None:
    edges = size_edges(list(range(100)))
    assert edges == [20, 40, 60, 80]
    assert size_bins([1, 30, 500], edges) == Counter({"0": 1, "1": 1, "4": 1})
