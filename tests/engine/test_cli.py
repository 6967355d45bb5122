"""The `featurelm` CLI: JSON out on success, one clear line and a non-zero exit on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SENTIMENT, ProjectFactory, last_line_of_python

REPO = Path(__file__).resolve().parents[2]


def featurelm(config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    prefix = ["--config", str(config)] if config else []
    return subprocess.run([sys.executable, "-m", "featurelm.cli", *prefix, *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_run_prints_output_and_meta_as_json(make_project: ProjectFactory) -> None:
    done = featurelm(make_project(), "run", "sentiment", "--input", '{"text": "great"}')
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["output"] == {"sentiment": "positive"}
    assert body["meta"]["backend"] == "primary"


def test_run_without_a_hosted_backend_never_imports_litellm(
        make_project: ProjectFactory) -> None:
    config = make_project(backends={"vllm": {"kind": "openai", "options": {
        "base_urls": ["http://127.0.0.1:9/v1"]}}, "primary": {"kind": "scripted", "options": {
        "replies": ['{"sentiment": "positive"}']}}},
        routes={"default": {"backends": ["primary", "vllm"]}})
    script = ("import sys\n"
              "from featurelm.cli import main\n"
              f"code = main(['--config', {str(config)!r}, 'run', 'sentiment', "
              "'--input', '{\"text\": \"great\"}'])\n"
              "print(code, sorted(m for m in sys.modules if m.split('.')[0] == 'litellm'))\n")
    assert last_line_of_python(script) == "0 []"


def test_run_reads_input_from_a_file(make_project: ProjectFactory, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"text": "great"}')
    done = featurelm(make_project(), "run", "sentiment", "--input", f"@{tmp_path / 'in.json'}")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["run", "sentiment", "--input", "{not json"], "error: --input is not valid JSON"),
    (["run", "sentiment", "--input", '{"text": 5}'],
     "error: input does not match the sentiment input schema"),
    (["run", "nope", "--input", "{}"], "error: unknown feature 'nope'"),
    (["run", "sentiment", "--input", "@/does/not/exist.json"], "error: cannot read"),
])
def test_bad_input_gives_one_clear_line_and_no_traceback(
        make_project: ProjectFactory, args: list[str], message: str) -> None:
    done = featurelm(make_project(), *args)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0].startswith(message), done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_check_lists_every_problem_and_fails(make_project: ProjectFactory) -> None:
    bad = {**SENTIMENT, "name": "second", "prompt": {"user": "{{ missing }}"}}
    config = make_project([SENTIMENT, bad, {**SENTIMENT, "name": "third", "bogus": 1}])
    done = featurelm(config, "check")
    assert done.returncode == 2
    assert "2 problem(s)" in done.stderr
    assert "second.yaml: prompt.user" in done.stderr and "third.yaml: bogus" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_passes_on_a_good_project(make_project: ProjectFactory) -> None:
    done = featurelm(make_project(), "check")
    assert done.returncode == 0
    assert "ok: 1 feature(s): sentiment" in done.stdout


def test_schema_is_the_published_feature_file_schema() -> None:
    done = featurelm(None, "schema")
    assert done.returncode == 0
    schema = json.loads(done.stdout)
    assert schema["additionalProperties"] is False
    assert {"name", "input", "output", "prompt"} <= set(schema["required"])
    published = json.loads((REPO / "schemas" / "feature.schema.json").read_text())
    assert published == schema, "run `make schema` to refresh schemas/feature.schema.json"
