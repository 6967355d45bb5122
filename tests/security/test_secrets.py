"""Forced provider failures never leak key material: the provider key, its Authorization
header, tenant and admin API keys and FEATURELM_SECRET appear in no log line, metric, error
body, eval cassette or audit log entry."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from featurelm.cli import build_parser
from featurelm.engine.store import Store
from featurelm.evals.cli import run
from tests.security.conftest import (
    PROVIDER_KEY,
    PROVIDER_KEY_ENV,
    SERVER_SECRET,
    SecureServer,
    assert_problem,
    env_secrets,
    still_serves,
)

pytestmark = pytest.mark.slow


async def test_forced_provider_errors_leak_no_secret_anywhere(
        http: httpx.Client, secure_server: SecureServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    outputs: dict[str, str] = {}
    acme = secure_server.bearer("acme")
    # 401 from the provider, whose body echoes the key and the Authorization header.
    for feature in ("leaky", "unknown_model"):
        response = http.post(f"/v1/features/{feature}", json={"input": {"text": "great"}},
                             headers=acme)
        body = assert_problem(response, 502, "backend")
        assert body["provider_status"] in (401, 404)
        outputs[f"{feature} error body"] = response.text
        batch = http.post(f"/v1/features/{feature}/batch",
                          json={"inputs": [{"text": "a"}, {"text": "b"}]}, headers=acme)
        outputs[f"{feature} batch body"] = batch.text
        stream = http.post(f"/v1/features/{feature}", json={"input": {"text": "great"}},
                           headers={**acme, "Accept": "text/event-stream"})
        outputs[f"{feature} stream"] = stream.text
    # The provider really was sent the key, so the checks below can fail.
    assert secure_server.bad_key.received[-1].headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert "provider_status" in outputs["leaky error body"]
    # Wrong keys of every shape answer 401 without echoing what was sent.
    for sent in (secure_server.live.keys.tenants["acme"] + "x", SERVER_SECRET, PROVIDER_KEY):
        response = http.get("/v1/features", headers={"Authorization": f"Bearer {sent}"})
        assert_problem(response, 401, "unknown api key")
        assert sent not in response.text
    # Overrides and tenant admin leave audit entries; create some.
    saved = http.put("/v1/tenants/globex/overrides/sentiment",
                     content="prompt: {user: 'Review: {{ text }}'}",
                     headers=secure_server.bearer("globex"))
    assert saved.status_code == 201, saved.text
    created = http.post("/v1/tenants", json={"name": "secrets-probe"},
                        headers=secure_server.bearer("admin"))
    assert created.status_code == 201
    probe_key = created.json()["api_key"]
    metrics = http.get("/metrics", headers=secure_server.bearer("admin"))
    assert metrics.status_code == 200
    outputs["metrics"] = metrics.text
    # An eval run recording cassettes against the same config, failing provider included.
    monkeypatch.setenv(PROVIDER_KEY_ENV, PROVIDER_KEY)
    monkeypatch.setenv("FEATURELM_SECRET", SERVER_SECRET)
    cassettes = tmp_path / "cassettes"
    args = build_parser().parse_args([
        "eval", "counted", "leaky", "--record", str(cassettes),
        "--config", str(secure_server.root / "featurelm.yaml")])
    assert await run(args) == 1  # leaky's case fails: its provider refuses the key
    captured = capsys.readouterr()
    outputs["eval output"] = captured.out + captured.err
    recorded = sorted(cassettes.glob("*.json"))
    # The baseline holds every recorded output: it is searched for secrets like the cassette.
    assert [p.name for p in recorded] == ["baseline.json", "counted.json"]
    for path in recorded:
        outputs[f"cassette {path.name}"] = path.read_text()
    store_url = f"sqlite:///{secure_server.root / 'featurelm.db'}"
    store = await Store.connect(store_url)
    try:
        audit = await store.audit_log()
    finally:
        await store.aclose()
    assert {"create_tenant", "save"} <= {entry.action for entry in audit}
    outputs["audit log"] = json.dumps([entry.__dict__ for entry in audit], default=str)
    outputs["server log"] = secure_server.live.logs()

    secrets = {**env_secrets(secure_server), "probe tenant key": probe_key,
               "provider Authorization header": f"Bearer {PROVIDER_KEY}"}
    leaks = [f"{secret} in {where}" for where, text in outputs.items()
             for secret, value in secrets.items() if value in text]
    assert leaks == []
    still_serves(http, secure_server)
