"""The schemas and deadlines that crashed featurelm, each as a one-feature project, end to end.

Each goes through `featurelm check`, then `featurelm run`, then a live `featurelm serve`: the
answer is valid output or one clear error (one line on the CLI, problem+json over HTTP),
never a signal, a traceback or a 500, and the server keeps serving after it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from featurelm.engine.schemas import violations
from tests.conftest import SENTIMENT, scripted
from tests.serving.conftest import LiveServer, start_server, write_project

LOCAL_1K = {"local": {"kind": "local", "options": {"n_ctx": 1024}}}
ROUTES = {"default": {"backends": ["local"]}}


def contract(name: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A one-feature contract whose output holds `properties`, all required."""
    spec = copy.deepcopy(SENTIMENT)
    spec.update(name=name, examples=[], model={"max_output_tokens": 48})
    spec["output"] = {"type": "object", "additionalProperties": False,
                      "required": list(properties), "properties": properties}
    spec.update(extra)
    return spec


def featurelm(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "featurelm.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ),
                          cwd=config.parent)


def assert_clean_exit(done: subprocess.CompletedProcess[str]) -> None:
    """Exited by itself (no signal), without a traceback; a failure is one `error:` line."""
    assert done.returncode >= 0, f"killed by signal {-done.returncode}:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, done.stderr


def assert_valid_or_one_error(done: subprocess.CompletedProcess[str],
                              schema: dict[str, Any]) -> None:
    assert_clean_exit(done)
    if done.returncode == 0:
        output = json.loads(done.stdout)["output"]
        assert not violations(schema, output), output


def assert_valid_or_problem(response: httpx.Response, schema: dict[str, Any]) -> None:
    if response.status_code == 200:
        assert not violations(schema, response.json()["output"]), response.text
    else:
        assert response.status_code != 500 and response.status_code < 600, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["title"]


def call(server: LiveServer, feature: str, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/features/{feature}", json={"input": payload}, timeout=60,
                      headers=server.keys.bearer("acme"))


@pytest.fixture
def live() -> Iterator[list[LiveServer]]:
    started: list[LiveServer] = []
    yield started
    for server in started:
        server.stop()


def serve(config: Path, live: list[LiveServer]) -> LiveServer:
    live.append(start_server(config, ["acme"]))
    return live[-1]


# -- schemas that crashed the local backend, on the real model -----------------------------------

#: Lengths are bounded so the small model finishes within a short output budget.
CRASHED = {
    "digits": {"n": {"type": "string", "pattern": "^\\d+$", "maxLength": 6}},
    "unanchored": {"code": {"type": "string", "pattern": "[A-Z]{3}", "maxLength": 3}},
    "described": {"note": {"description": "anything at all"}},
    "any_items": {"list": {"type": "array", "items": {}, "maxItems": 2}},
}


@pytest.mark.slow
def test_schemas_that_crashed_the_local_backend_check_run_and_serve(tmp_path: Path,
                                                                    live: list[LiveServer]) -> None:
    payload = {"text": "A sturdy chair, arrived on time."}
    for name, properties in CRASHED.items():
        spec = contract(name, properties)
        config = write_project(tmp_path / name, [spec], LOCAL_1K, ROUTES)
        checked = featurelm(config, "check")
        assert checked.returncode == 0, checked.stderr
        assert_clean_exit(checked)
        ran = featurelm(config, "run", name, "--input", json.dumps(payload))
        assert_valid_or_one_error(ran, spec["output"])
    # One server holds them all: each call answers, and the server is still up after them.
    specs = [contract(name, properties) for name, properties in CRASHED.items()]
    server = serve(write_project(tmp_path / "all", specs, LOCAL_1K, ROUTES), live)
    for spec in specs:
        assert_valid_or_problem(call(server, spec["name"], payload), spec["output"])
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert server.process.poll() is None, server.logs()
    assert "Traceback" not in server.logs()


@pytest.mark.slow
def test_a_deadline_during_generation_is_a_timeout_not_a_crash(tmp_path: Path,
                                                               live: list[LiveServer]) -> None:
    # The grammar forces hundreds of tokens and the prompt is long: the 3 s deadline passes
    # while the model generates. Closing the model under that generation was a segfault.
    spec = contract("counting", {"n": {"type": "array", "minItems": 300,
                                       "items": {"type": "integer"}}},
                    model={"max_output_tokens": 900})
    spec["input"]["properties"]["text"]["maxLength"] = 20000
    config = write_project(tmp_path, [spec], {"local": {"kind": "local"}}, ROUTES,
                           limits={"request_timeout_s": 3})
    payload = {"text": "Count every number you know, slowly. " * 12}
    ran = featurelm(config, "run", "counting", "--input", json.dumps(payload))
    assert_clean_exit(ran)
    assert ran.returncode != 0 and "deadline" in ran.stderr, ran.stderr
    server = serve(config, live)
    response = call(server, "counting", payload)
    assert response.status_code in (502, 503, 504), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert_valid_or_problem(call(server, "counting", payload), spec["output"])
    assert server.process.poll() is None, server.logs()


@pytest.mark.slow
def test_a_schema_that_overflows_the_context_is_refused_by_check_run_and_serve(
        tmp_path: Path) -> None:
    # 400 described fields: the schema alone is over 4,096 tokens of Gemma's tokenizer.
    properties = {f"field_{i}": {"type": "string", "maxLength": 20,
                                 "description": f"The value number {i} of the record, as "
                                                "printed on the form, without quotes."}
                  for i in range(400)}
    spec = contract("huge", properties)
    config = write_project(tmp_path, [spec], {"local": {"kind": "local"}}, ROUTES)
    for args in (("check",), ("run", "huge", "--input", '{"text": "x"}'),
                 ("serve", "--port", "0")):
        done = featurelm(config, *args)
        assert_clean_exit(done)
        assert done.returncode != 0
        assert "huge.yaml" in done.stderr and "context window" in done.stderr, done.stderr


# -- validation semantics, on a scripted backend -------------------------------------------------

DRAFT7_EXCLUSIVE = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {"email": {"type": "string"}, "phone": {"type": "string"}},
    "dependencies": {"email": {"not": {"required": ["phone"]}}},
}


def semantic_project(tmp_path: Path, output: dict[str, Any], *replies: str) -> Path:
    spec = copy.deepcopy(SENTIMENT)
    spec.update(name="contact", output=output, examples=[], model={"max_attempts": 2})
    return write_project(tmp_path, [spec], {"primary": scripted(*replies)},
                         {"default": {"backends": ["primary"]}})


BAD_OUTPUTS = {
    "draft-07 dependencies": (DRAFT7_EXCLUSIVE, '{"email": "a@b.example", "phone": "1"}'),
    "date": ({"type": "object", "properties": {"d": {"type": "string", "format": "date"}}},
             '{"d": "mock"}'),
    "date-time": ({"type": "object",
                   "properties": {"d": {"type": "string", "format": "date-time"}}},
                  '{"d": "yesterday"}'),
    "email": ({"type": "object", "properties": {"d": {"type": "string", "format": "email"}}},
              '{"d": "nobody"}'),
}


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_an_output_breaking_the_declared_draft_or_a_format_is_never_returned_by_run(
        tmp_path: Path, case: str) -> None:
    schema, reply = BAD_OUTPUTS[case]
    config = semantic_project(tmp_path, schema, reply)
    assert featurelm(config, "check").returncode == 0
    ran = featurelm(config, "run", "contact", "--input", '{"text": "hi"}')
    assert_clean_exit(ran)
    assert ran.returncode != 0 and ran.stdout == "", ran.stdout


@pytest.mark.slow
def test_an_output_breaking_the_declared_draft_or_a_format_is_never_served(
        tmp_path: Path, live: list[LiveServer]) -> None:
    specs = []
    for i, (schema, reply) in enumerate(BAD_OUTPUTS.values()):
        spec = copy.deepcopy(SENTIMENT)
        spec.update(name=f"case{i}", output=schema, examples=[],
                    model={"max_attempts": 2, "route": f"r{i}"})
        specs.append((spec, reply))
    config = write_project(
        tmp_path, [s for s, _ in specs], {f"b{i}": scripted(r) for i, (_, r) in enumerate(specs)},
        {f"r{i}": {"backends": [f"b{i}"]} for i in range(len(specs))})
    server = serve(config, live)
    for spec, _ in specs:
        response = call(server, spec["name"], {"text": "hi"})
        assert response.status_code == 502, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_a_valid_draft7_output_is_returned(tmp_path: Path) -> None:
    config = semantic_project(tmp_path, DRAFT7_EXCLUSIVE, '{"phone": "1"}')
    ran = featurelm(config, "run", "contact", "--input", '{"text": "hi"}')
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["output"] == {"phone": "1"}


# -- contracts refused at load time, with file and path ------------------------------------------

def refused_everywhere(config: Path, feature: str, *expected: str) -> None:
    for args in (("check",), ("run", feature, "--input", '{"text": "x"}'),
                 ("serve", "--port", "0")):
        done = featurelm(config, *args, timeout=60)
        assert_clean_exit(done)
        assert done.returncode != 0, (args, done.stdout)
        for text in expected:
            assert text in done.stderr, (args, done.stderr)


def test_a_misspelled_required_is_an_error_naming_file_and_path(tmp_path: Path) -> None:
    spec = copy.deepcopy(SENTIMENT)
    spec["output"]["requierd"] = spec["output"].pop("required")
    config = write_project(tmp_path, [spec], {"primary": scripted('{"sentiment": "positive"}')},
                           {"default": {"backends": ["primary"]}})
    refused_everywhere(config, "sentiment", "sentiment.yaml", "output", "requierd", "required")


def test_a_few_shot_example_with_a_bad_date_is_an_error_naming_file_and_path(
        tmp_path: Path) -> None:
    spec = copy.deepcopy(SENTIMENT)
    spec["output"]["properties"]["when"] = {"type": "string", "format": "date"}
    spec["examples"] = [{"input": {"text": "Arrives soon."},
                         "output": {"sentiment": "neutral", "when": "next Tuesday"}}]
    config = write_project(tmp_path, [spec], {"primary": scripted('{"sentiment": "positive"}')},
                           {"default": {"backends": ["primary"]}})
    refused_everywhere(config, "sentiment", "sentiment.yaml", "examples", "when")
