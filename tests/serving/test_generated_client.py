"""A client generated from the service's own OpenAPI document works and type-checks.

openapi-python-client (offline, from the dev extra) generates a client from `/openapi.json` of a
live server without a single warning; a small call site then calls two features and uploads an
override as JSON through it, runs against the server, and passes `mypy --strict`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import SENTIMENT, scripted
from tests.serving.conftest import LiveServer, start_server, write_project

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
LANGUAGE: dict[str, Any] = {
    "name": "detect_language",
    "description": "Name the language of a text.",
    "input": {"type": "object", "additionalProperties": False, "required": ["text"],
              "properties": {"text": {"type": "string", "maxLength": 2000}}},
    "output": {"type": "object", "additionalProperties": False,
               "required": ["language", "confidence"],
               "properties": {"language": {"type": "string", "enum": ["en", "fr", "de"]},
                              "confidence": {"type": "number", "minimum": 0, "maximum": 1}}},
    "prompt": {"system": "You name languages.", "user": "Text: {{ text }}"},
    "model": {"route": "language", "max_output_tokens": 32},
}
#: The generator's one knob this service needs: it has no body type for application/yaml, so
#: the YAML upload is mapped to a byte body (docs/http.md says the same to client authors).
GENERATOR_CONFIG = {"content_type_overrides": {"application/yaml": "application/octet-stream"},
                    "post_hooks": []}

CALL_SITE = '''\
"""Calls two features and uploads an override with the generated client."""

import sys

from featurelm_client import AuthenticatedClient
from featurelm_client.api.admin import apply_override
from featurelm_client.api.features import run_detect_language, run_sentiment
from featurelm_client.models import (
    ApplyOut,
    DetectLanguageInput,
    DetectLanguageOutputLanguage,
    DetectLanguageRequest,
    DetectLanguageResponse,
    Override,
    Problem,
    SentimentInput,
    SentimentOutputSentiment,
    SentimentRequest,
    SentimentResponse,
)


def sentiment_of(client: AuthenticatedClient, text: str) -> SentimentOutputSentiment:
    answer = run_sentiment.sync(client=client,
                                body=SentimentRequest(input_=SentimentInput(text=text)))
    if not isinstance(answer, SentimentResponse):
        raise SystemExit(f"sentiment failed: {answer}")
    return answer.output.sentiment


def language_of(client: AuthenticatedClient, text: str) -> tuple[DetectLanguageOutputLanguage,
                                                                 float, str]:
    answer = run_detect_language.sync(
        client=client, body=DetectLanguageRequest(input_=DetectLanguageInput(text=text)),
        idempotency_key="call-site-1")
    if isinstance(answer, Problem) or answer is None:
        raise SystemExit(f"detect_language failed: {answer}")
    response: DetectLanguageResponse = answer
    return response.output.language, response.output.confidence, response.meta.backend


def try_override(client: AuthenticatedClient) -> int:
    override = Override.from_dict({"prompt": {"system": "You read reviews for ACME."}})
    answer = apply_override.sync("acme", "sentiment", client=client, body=override,
                                 dry_run=True)
    if not isinstance(answer, ApplyOut):
        raise SystemExit(f"override refused: {answer}")
    return len(answer.rendered)


def main() -> None:
    url, key = sys.argv[1], sys.argv[2]
    with AuthenticatedClient(base_url=url, token=key) as client:
        sentiment = sentiment_of(client, "Works great.")
        language, confidence, backend = language_of(client, "Bonjour tout le monde")
        rendered = try_override(client)
    print(sentiment.value, language.value, confidence, backend, rendered)


if __name__ == "__main__":
    main()
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("generated")
    config = write_project(
        root, features=[{**SENTIMENT, "overridable": ["prompt.system"]}, LANGUAGE],
        backends={"primary": scripted('{"sentiment": "positive"}'),
                  "linguist": scripted('{"language": "fr", "confidence": 0.9}')},
        routes={"default": {"backends": ["primary"]}, "language": {"backends": ["linguist"]}},
        auth="required")
    live = start_server(config, ["acme"])
    yield live
    live.stop()


@pytest.fixture(scope="module")
def generated(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated package's parent folder (the package is `featurelm_client`)."""
    root = tmp_path_factory.mktemp("client")
    spec = httpx.get(server.url + "/openapi.json", timeout=10)
    assert spec.status_code == 200
    (root / "openapi.json").write_bytes(spec.content)
    (root / "generator.yaml").write_text(yaml.safe_dump(GENERATOR_CONFIG))
    done = subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--path", "openapi.json",
         "--output-path", "featurelm_client", "--meta", "none", "--config", "generator.yaml"],
        cwd=root, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # Anything the generator could not express (a content type, a schema) is a warning and a
    # missing piece of the client: there must be none.
    assert "Warning" not in output and "Unsupported" not in output, output
    return root


def test_every_operation_is_generated_with_named_models(generated: Path) -> None:
    package = generated / "featurelm_client"
    operations = {p.stem for p in package.glob("api/*/*.py")} - {"__init__"}
    assert {"run_sentiment", "batch_sentiment", "run_detect_language", "apply_override",
            "override_schema_of", "list_features"} <= operations
    models = {p.stem for p in (package / "models").glob("*.py")}
    assert {"override", "override_schema", "batch_item_error", "sentiment_batch_response",
            "detect_language_response"} <= models
    # What feature calls and overrides deal in is named after a schema of the document, never
    # after an operation or a position (`ResultsItemType1`, `..._put_json_body`,
    # `..._get_response_...`).
    ours = [m for m in models if m.startswith(("sentiment", "detect_language", "override",
                                               "apply", "batch", "run", "problem", "meta"))]
    assert not [m for m in ours if "type_" in m or "_json_body" in m or "_response_" in m]
    batch = (package / "models" / "sentiment_batch_response.py").read_text()
    assert "results: list[BatchItemError | SentimentResponse]" in batch


def test_the_generated_client_calls_two_features_and_type_checks_strict(
        server: LiveServer, generated: Path) -> None:
    call_site = generated / "call_site.py"
    call_site.write_text(textwrap.dedent(CALL_SITE))
    # The suite runs with PYTHONSAFEPATH (the checkout must not shadow the installed
    # package), so the generated package is put on the path by name.
    env = {**os.environ, "PYTHONPATH": str(generated), "MYPYPATH": str(generated)}
    ran = subprocess.run([sys.executable, str(call_site), server.url,
                          server.keys.tenants["acme"]],
                         cwd=generated, env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.split() == ["positive", "fr", "0.9", "linguist", "1"]

    # The generated package is read for its types only (its own style is the generator's);
    # the call site itself is held to --strict.
    checked = subprocess.run(
        [str(BIN / "mypy"), "--strict", "--follow-imports=silent", "--cache-dir",
         str(generated / ".mypy_cache"), "call_site.py"],
        cwd=generated, env=env, capture_output=True, text=True, timeout=180)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("Success"), checked.stdout
