"""The hosted adapter, calling through litellm to a real OpenAI-compatible server on loopback."""

import json
import os
import subprocess
import sys

import litellm
import pytest

import featurelm.engine.backends.hosted  # noqa: F401  (first: keeps the litellm import offline)
from featurelm.engine.backends import build_backend
from featurelm.engine.config import BackendConfig
from featurelm.engine.costs import cost_usd
from featurelm.engine.errors import BackendError, ContractError
from featurelm.engine.testing import Fault
from featurelm.engine.types import CompletionRequest, Message, Usage

# litellm builds pydantic models of its own types lazily, on the first call.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Item .* is using the `ReadOnly` qualifier:UserWarning")

SCHEMA = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
REQUEST = CompletionRequest(messages=(Message("user", "Invoice total: 12.50 EUR"),),
                            output_schema=SCHEMA, cache_salt="tenant-salt", timeout=5.0)


@pytest.fixture
def hosted(fault_server, monkeypatch):
    monkeypatch.setenv("HOSTED_TEST_KEY", "sk-test-0123456789")
    return build_backend("hosted", BackendConfig(
        kind="hosted", model="openai/fault-model",
        options={"api_base": fault_server.url, "api_key_env": "HOSTED_TEST_KEY"}))


@pytest.mark.slow  # a fresh interpreter importing litellm takes several seconds
def test_importing_the_adapter_keeps_litellm_offline():
    code = ("import featurelm.engine.backends.hosted, litellm, os\n"
            "assert os.environ['LITELLM_LOCAL_MODEL_COST_MAP'] == 'True'\n"
            "assert litellm.model_cost['gpt-4o-mini']['input_cost_per_token'] > 0\n")
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120, check=True)
    # litellm logs each failed attempt to download its price map.
    assert "model cost map" not in result.stderr


async def test_a_call_goes_through_litellm_with_the_schema_as_response_format(
        fault_server, hosted):
    completion = await hosted.complete(REQUEST)
    assert json.loads(completion.text) == {"total": 0}
    assert completion.backend == "hosted"
    assert completion.usage.prompt_tokens > 0
    (body,) = fault_server.bodies
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert "cache_salt" not in body
    assert fault_server.received[0].headers["authorization"] == "Bearer sk-test-0123456789"


async def test_streaming_through_litellm(fault_server, hosted):
    chunks = [chunk async for chunk in hosted.stream(REQUEST)]
    assert json.loads("".join(chunks)) == {"total": 0}


@pytest.mark.parametrize(("fault", "status", "retryable"), [
    (Fault.rate_limited(2), 429, True),
    (Fault.error(500), 500, True),
    (Fault.error(400), 400, False),
])
async def test_litellm_does_not_retry_on_its_own(fault_server, hosted, fault, status,
                                                 retryable):
    fault_server.script(fault)
    with pytest.raises(BackendError) as caught:
        await hosted.complete(REQUEST)
    assert fault_server.completions == 1
    assert (caught.value.provider_status, caught.value.retryable) == (status, retryable)


async def test_rate_limit_retry_after_survives_litellm(fault_server, hosted):
    fault_server.script(Fault.rate_limited(2))
    with pytest.raises(BackendError) as caught:
        await hosted.complete(REQUEST)
    assert caught.value.retry_after == 2.0


async def test_context_window_errors_are_flagged(fault_server, hosted):
    fault_server.script(Fault.context_length())
    with pytest.raises(BackendError) as caught:
        await hosted.complete(REQUEST)
    assert caught.value.context_length and not caught.value.retryable


async def test_a_connection_reset_is_retryable(fault_server, hosted):
    fault_server.script(Fault.reset())
    with pytest.raises(BackendError) as caught:
        await hosted.complete(REQUEST)
    assert caught.value.retryable


def test_hosted_config_is_checked(monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    for config, path in [
        (BackendConfig(kind="hosted", model="openai/x", options={"retries": 3}),
         "backends.h.options.retries"),
        (BackendConfig(kind="hosted", model=""), "backends.h.model"),
        (BackendConfig(kind="hosted", model="openai/x", structured="structured_outputs"),
         "backends.h.structured"),
        (BackendConfig(kind="hosted", model="openai/x",
                       options={"api_key_env": "NOT_SET_ANYWHERE"}),
         "backends.h.options.api_key_env"),
    ]:
        with pytest.raises(ContractError) as caught:
            build_backend("h", config)
        assert caught.value.issues[0].path == path


def test_hosted_cost_comes_from_litellms_price_map():
    prices = litellm.model_cost["gpt-4o-mini"]
    usage = Usage(prompt_tokens=1000, completion_tokens=200)
    expected = 1000 * prices["input_cost_per_token"] + 200 * prices["output_cost_per_token"]
    config = BackendConfig(kind="hosted", model="openai/gpt-4o-mini")
    assert cost_usd(config, "openai/gpt-4o-mini", usage) == pytest.approx(expected)
    assert expected > 0


def test_a_configured_price_wins_over_the_price_map():
    config = BackendConfig(kind="hosted", model="openai/gpt-4o-mini",
                           input_price_per_mtok=1.0, output_price_per_mtok=2.0)
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000)
    assert cost_usd(config, "openai/gpt-4o-mini", usage) == pytest.approx(2.0)
