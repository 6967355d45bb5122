"""The fault-injecting server itself: endpoints, fault plans, recording, command line."""

import json
import socket
import subprocess
import sys
import time

import httpx
import pytest

from featurelm.engine.testing import Fault, FaultPlan, FaultServer

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_health_and_models_endpoints(fault_server):
    with httpx.Client(base_url=fault_server.url.removesuffix("/v1")) as client:
        assert client.get("/health").json() == {"status": "ok"}
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["fault-model"]
        assert client.get("/v1/nothing").status_code == 404


def test_replies_come_from_a_function_of_the_request():
    def echo(body):
        return body["messages"][-1]["content"].upper()

    with FaultServer(reply=echo) as server, httpx.Client() as client:
        answer = client.post(f"{server.url}/chat/completions", json=CHAT).json()
    assert answer["choices"][0]["message"]["content"] == "HI"
    assert server.bodies == [CHAT]


def test_default_replies_satisfy_the_requested_schema(fault_server):
    schema = {"type": "object", "required": ["label", "score", "tags"], "properties": {
        "label": {"enum": ["billing", "bug"]}, "score": {"type": "number", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}}}
    with httpx.Client() as client:
        answer = client.post(f"{fault_server.url}/chat/completions", json={
            **CHAT, "structured_outputs": {"json": schema}}).json()
    content = json.loads(answer["choices"][0]["message"]["content"])
    assert content == {"label": "billing", "score": 1, "tags": ["x", "x"]}


def test_a_scripted_sequence_comes_before_ok_replies(fault_server):
    fault_server.script(Fault.rate_limited(7), Fault.error(503), Fault.malformed())
    with httpx.Client() as client:
        responses = [client.post(f"{fault_server.url}/chat/completions", json=CHAT)
                     for _ in range(4)]
    assert [r.status_code for r in responses] == [429, 503, 200, 200]
    assert responses[0].headers["retry-after"] == "7"
    with pytest.raises(json.JSONDecodeError):
        responses[2].json()
    assert responses[3].json()["choices"][0]["message"]["content"] == "ok"


def test_faults_at_a_configured_rate():
    plan = FaultPlan(rates=[(0.5, Fault.error(500))], seed=3)
    with FaultServer(plan) as server, httpx.Client() as client:
        statuses = [client.post(f"{server.url}/chat/completions", json=CHAT).status_code
                    for _ in range(60)]
    assert 15 <= statuses.count(500) <= 45
    assert statuses.count(500) + statuses.count(200) == 60


def test_a_reset_drops_the_connection(fault_server):
    fault_server.script(Fault.reset())
    with httpx.Client() as client, pytest.raises(httpx.TransportError):
        client.post(f"{fault_server.url}/chat/completions", json=CHAT)


def test_the_command_line_serves_with_faults():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "featurelm.engine.testing.fault_server", "--port", str(port),
               "--rate", "429=1", "--retry-after", "2"]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as process:
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    health = httpx.get(f"{url}/health")
                    break
                except httpx.ConnectError:
                    time.sleep(0.05)
            assert health.status_code == 200
            response = httpx.post(f"{url}/v1/chat/completions", json=CHAT)
            assert (response.status_code, response.headers["retry-after"]) == (429, "2.0")
        finally:
            process.terminate()
            process.wait(10)
