"""Security fixtures: one real `featurelm serve` process shared by every adversarial HTTP test.

The server runs features on scripted backends and on OpenAI-compatible backends pointed at
fault servers in this process: one "model" that obeys prompt injections (and counts calls),
one that answers 401 echoing the API key, one that answers 404 for an unknown model. Every
secret the service holds is a known string here, so tests can grep outputs for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from featurelm.engine.testing.fault_server import Fault, FaultPlan, FaultServer, default_reply
from tests.conftest import SENTIMENT, scripted
from tests.serving.conftest import LiveServer, start_server, write_project

#: Secrets the server holds; none may ever appear in a log, metric, error body or recording.
PROVIDER_KEY = "prov-9f8e7d6c5b4a-TOPSECRET-key"
PROVIDER_KEY_ENV = "FLM_SECURITY_TEST_PROVIDER_KEY"
SERVER_SECRET = "srv-secret-0a1b2c3d4e5f-DO-NOT-LEAK"
#: An "obedient" model replies with whatever follows this marker in the user's input.
OBEY = "OBEY:"
OVERRIDABLE = ["prompt.system", "prompt.user", "examples", "model.route", "model.temperature"]


def obedient_reply(body: dict[str, Any]) -> str:
    """A model that follows injected instructions, re-asks included: the text after OBEY: in
    the conversation's last user turn that has one is its whole reply."""
    for message in reversed(body["messages"]):
        content = str(message["content"])
        if message["role"] == "user" and OBEY in content:
            return content.split(OBEY, 1)[1].split("\n", 1)[0].strip()
    return default_reply(body)


def sentiment_like(name: str, route: str, **extra: Any) -> dict[str, Any]:
    return {**SENTIMENT, "name": name, "model": {**SENTIMENT["model"], "route": route},
            "overridable": OVERRIDABLE, **extra}


GUARDED = {
    **SENTIMENT, "name": "guarded",
    "description": "An input schema with a catastrophic-backtracking pattern (on RE2).",
    "input": {"type": "object", "additionalProperties": False, "required": ["code"],
              "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}}},
    "prompt": {"user": "Code: {{ code }}"},
    "examples": [],
}


@dataclass
class SecureServer:
    live: LiveServer
    root: Path
    model: FaultServer
    bad_key: FaultServer
    no_model: FaultServer

    @property
    def url(self) -> str:
        return self.live.url

    def bearer(self, who: str) -> dict[str, str]:
        return self.live.keys.bearer(who)


@pytest.fixture(scope="session")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    root = tmp_path_factory.mktemp("security")
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {PROVIDER_KEY}. "
                                            f"You sent 'Authorization: Bearer {PROVIDER_KEY}'",
                                 "type": "invalid_request_error", "code": "invalid_api_key"}})
    missing = json.dumps({"error": {"message": "The model `no-such-model` does not exist",
                                    "type": "invalid_request_error",
                                    "code": "model_not_found"}})
    model = FaultServer(reply=obedient_reply).start()
    bad_key = FaultServer(FaultPlan(rates=[(1.0, Fault.error(401, body=echo))])).start()
    no_model = FaultServer(FaultPlan(rates=[(1.0, Fault.error(404, body=missing))])).start()

    def openai(server: FaultServer, model_name: str = "fault-model") -> dict[str, Any]:
        return {"kind": "openai", "model": model_name,
                "options": {"base_urls": [server.url], "api_key_env": PROVIDER_KEY_ENV}}

    (root / "evals").mkdir()
    (root / "evals" / "counted.jsonl").write_text(json.dumps({
        "id": "ok", "input": {"text": "great"},
        "assert": [{"type": "equals", "path": "sentiment", "value": "positive"}]}) + "\n")
    (root / "evals" / "leaky.jsonl").write_text(json.dumps({
        "id": "bad-key", "input": {"text": "great"},
        "assert": [{"type": "equals", "path": "sentiment", "value": "positive"}]}) + "\n")
    features = [
        sentiment_like("sentiment", "default",
                       model={**SENTIMENT["model"], "route": "default",
                              "allowed_routes": ["alt"]}),
        sentiment_like("counted", "model", model={**SENTIMENT["model"], "route": "model",
                                                  "max_attempts": 2},
                       evals={"dataset": "evals/counted.jsonl"}),
        sentiment_like("counted_shared", "model", cache={"shared": True}),
        sentiment_like("leaky", "bad_key", evals={"dataset": "evals/leaky.jsonl"}),
        sentiment_like("unknown_model", "no_model"),
        GUARDED,
    ]
    config = write_project(
        root, features=features,
        backends={"primary": scripted('{"sentiment": "positive"}'),
                  "alt": scripted('{"sentiment": "neutral"}'),
                  "model": openai(model), "bad_key": openai(bad_key),
                  "no_model": openai(no_model, "no-such-model")},
        routes={"default": {"backends": ["primary"]}, "alt": {"backends": ["alt"]},
                "model": {"backends": ["model"], "retries": 0},
                "bad_key": {"backends": ["bad_key"], "retries": 0},
                "no_model": {"backends": ["no_model"], "retries": 0}},
        auth="required",
        limits={"render_timeout_s": 0.3, "request_timeout_s": 5},
        http={"max_body_bytes": 200_000, "rate_limit_per_minute": 100_000, "drain_s": 0.1})
    with pytest.MonkeyPatch.context() as env:
        env.setenv(PROVIDER_KEY_ENV, PROVIDER_KEY)
        env.setenv("FEATURELM_SECRET", SERVER_SECRET)
        live = start_server(config, ["acme", "globex", "initech"])
    server = SecureServer(live, root, model, bad_key, no_model)
    yield server
    live.stop()
    for fault in (model, bad_key, no_model):
        fault.stop()


@pytest.fixture(scope="session")
def http(secure_server: SecureServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secure_server.url, timeout=30) as client:
        yield client


def assert_problem(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    """A problem+json refusal with `status`, naming each needle, and no stack trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    text = response.text.lower()
    for needle in needles:
        assert needle.lower() in text, f"{needle!r} not in {response.text}"
    assert "traceback" not in text
    return body


def still_serves(http: httpx.Client, server: SecureServer, who: str = "globex") -> None:
    """The service answers a plain feature call for another tenant."""
    response = http.post("/v1/features/sentiment", json={"input": {"text": "fine"}},
                         headers=server.bearer(who))
    assert response.status_code == 200, response.text
    assert response.json()["output"] == {"sentiment": "positive"}


def override_versions(http: httpx.Client, server: SecureServer, tenant: str,
                      feature: str = "sentiment") -> list[dict[str, Any]]:
    response = http.get(f"/v1/tenants/{tenant}/overrides/{feature}", headers=server.bearer(tenant))
    assert response.status_code == 200, response.text
    versions: list[dict[str, Any]] = response.json()["versions"]
    return versions


def env_secrets(server: SecureServer) -> dict[str, str]:
    """Every secret the server process holds, by name."""
    keys = server.live.keys
    return {"provider key": PROVIDER_KEY, "server secret": SERVER_SECRET,
            "admin key": keys.admin, **{f"{t} key": k for t, k in keys.tenants.items()}}

