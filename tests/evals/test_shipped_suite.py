"""The shipped features against their committed cassettes: the CI gate, offline and deterministic.

A feature whose cassette is missing is skipped with the command that records it; once recorded,
any change that alters a request (prompt, schema, model settings) or its answers fails here
until the cassette is recorded again from a run that passes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from evals.cli import add_arguments, run
from evals.dataset import SUFFIXES

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
