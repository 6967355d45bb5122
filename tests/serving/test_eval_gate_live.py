"""`featurelm serve` wires the eval gate: an override submitted with run_evals=true is
activated only if the feature's eval cases still pass."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import SENTIMENT, scripted
from tests.serving.conftest import LiveServer, start_server, write_project

pytestmark = pytest.mark.slow

GATED = {**SENTIMENT, "overridable": ["prompt.system"],
         "evals": {"dataset": "cases.jsonl", "threshold": 0.9}}
OVERRIDE = "prompt:\n  system: Classify the sentiment, please.\n"


@pytest.fixture(scope="module")
def gated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("gate")
    # The scripted model always answers "positive": one case passes, the other cannot.
    cases = [{"id": "happy", "input": {"text": "Love it"},
              "assert": [{"type": "equals", "path": "sentiment", "value": "positive"}]},
             {"id": "angry", "input": {"text": "Hate it"},
              "assert": [{"type": "equals", "path": "sentiment", "value": "negative"}]}]
    (root / "cases.jsonl").write_text("\n".join(json.dumps(c) for c in cases) + "\n")
    config = write_project(root, features=[GATED],
                           backends={"primary": scripted('{"sentiment": "positive"}')},
                           routes={"default": {"backends": ["primary"]}}, auth="required")
    server = start_server(config, ["acme"])
    yield server
    server.stop()


def test_an_override_below_the_eval_threshold_is_refused(gated_server: LiveServer) -> None:
    with httpx.Client(base_url=gated_server.url, timeout=30) as http:
        refused = http.put("/v1/tenants/acme/overrides/sentiment", params={"run_evals": "true"},
                           content=OVERRIDE, headers=gated_server.keys.bearer("acme"))
        versions = http.get("/v1/tenants/acme/overrides/sentiment",
                            headers=gated_server.keys.bearer("acme"))
    assert refused.status_code == 422, refused.text
    assert "pass rate 50% is below the threshold 90%" in refused.text
    assert versions.status_code == 200 and versions.json()["versions"] == []
