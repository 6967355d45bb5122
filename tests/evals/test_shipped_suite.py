"""The shipped features against their committed cassettes: the CI gate, offline and deterministic.

A feature whose cassette is missing is skipped with the command that records it; once recorded,
any change that alters a request (prompt, schema, model settings) or its answers fails here
until the cassette is recorded again from a run that passes. The thresholds themselves are
checked too: a model that ignores its input and copies a few-shot example must fail every feature.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from featurelm.evals.cli import add_arguments, run
from featurelm.evals.dataset import SUFFIXES

ROOT = Path(__file__).resolve().parents[2]
CASSETTES = ROOT / "evals" / "cassettes"


def shipped() -> list[str]:
    datasets = ROOT / "evals" / "datasets"
    names = {p.stem for p in datasets.glob("*") if p.suffix in SUFFIXES} if datasets.is_dir() \
        else set()
    return sorted(n for n in names if (ROOT / "features" / f"{n}.yaml").is_file())


@pytest.mark.parametrize("feature", shipped() or [
    pytest.param("-", marks=pytest.mark.skip(reason="no shipped feature has an eval dataset"))])
async def test_shipped_feature_passes_its_evals_in_replay(feature: str) -> None:
    if not (CASSETTES / f"{feature}.json").is_file():
        pytest.skip(f"no cassette for {feature}: record it with `python -m evals {feature} "
                    f"--record evals/cassettes` against the local model")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([feature, "--config", str(ROOT / "featurelm.yaml"),
                              "--replay", str(CASSETTES)])
    assert await run(args) == 0


def copied_examples() -> list[tuple[str, int]]:
    pairs = []
    for name in shipped():
        spec = yaml.safe_load((ROOT / "features" / f"{name}.yaml").read_text())
        pairs += [(name, i) for i in range(len(spec.get("examples") or []))]
    return pairs


@pytest.mark.parametrize(("feature", "example"), copied_examples() or [
    pytest.param("-", 0, marks=pytest.mark.skip(reason="no shipped feature has examples"))])
async def test_a_model_that_copies_an_example_fails_the_threshold(
        feature: str, example: int, tmp_path: Path) -> None:
    # The packaged 270M model, badly prompted, answers every input with the last few-shot
    # example; a threshold that such a broken prompt meets would gate nothing.
    spec = yaml.safe_load((ROOT / "features" / f"{feature}.yaml").read_text())
    reply = json.dumps(spec["examples"][example]["output"], ensure_ascii=False)
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "datasets").symlink_to(ROOT / "evals" / "datasets")
    config = tmp_path / "featurelm.yaml"
    config.write_text(yaml.safe_dump({
        "features_dir": str(ROOT / "features"), "prompts_dir": str(ROOT / "prompts"),
        "backends": {"local": {"kind": "scripted", "options": {"replies": [reply]}}},
        "routes": {"default": {"backends": ["local"]}},
        "cache": "none", "store": f"sqlite:///{tmp_path / 'featurelm.db'}"}))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    report = tmp_path / "report"
    argv = [feature, "--config", str(config), "--report", str(report)]
    assert await run(parser.parse_args(argv)) == 1
    # Every case got the copied answer and was scored on it: the threshold failed it, not an error.
    [result] = json.loads((report / "report.json").read_text())["features"]
    assert [r["error"] for c in result["cases"] for r in c["runs"]] == [None] * len(result["cases"])
