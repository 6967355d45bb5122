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
from featurelm.evals.drift import psi, size_bins, size_edges
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
