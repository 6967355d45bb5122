"""The OpenAI-compatible adapter, against a real HTTP server on loopback."""

import asyncio
import json
import subprocess
import sys
import time

import pytest

from featurelm.engine.backends import build_backend
from featurelm.engine.backends.openai_compat import OpenAICompatBackend
from featurelm.engine.config import BackendConfig
from featurelm.engine.errors import BackendError, ContractError
from featurelm.engine.testing import Fault, FaultServer
from featurelm.engine.tokens import count_prompt_tokens, count_text_tokens
from featurelm.engine.types import CompletionRequest, Message

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"],
          "additionalProperties": False}


def request(**overrides: object) -> CompletionRequest:
    fields: dict[str, object] = {
        "messages": (Message("system", "Classify."), Message("user", "my card was charged twice")),
        "output_schema": SCHEMA, "cache_salt": "salt-tenant-a"}
    fields.update(overrides)
    return CompletionRequest(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def backends():
    made: list[OpenAICompatBackend] = []

    def make(*urls: str, **kwargs: object) -> OpenAICompatBackend:
        backend = OpenAICompatBackend("vllm", model="m", base_urls=list(urls), **kwargs)  # type: ignore[arg-type]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


@pytest.mark.parametrize(("dialect", "expected"), [
    ("json_schema", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "output", "schema": SCHEMA, "strict": True}}}),
    ("structured_outputs", {"structured_outputs": {"json": SCHEMA}}),
    ("json_object_schema", {"response_format": {"type": "json_object", "schema": SCHEMA}}),
])
async def test_schema_travels_in_the_field_of_the_servers_dialect(
        fault_server, backends, dialect, expected):
    backend = backends(fault_server.url, structured=dialect)
    completion = await backend.complete(request())
    (body,) = fault_server.bodies
    for key, value in expected.items():
        assert body[key] == value
    other_fields = {"response_format", "structured_outputs"} - set(expected)
    assert not other_fields & set(body)
    assert json.loads(completion.text) == {"label": "x"}


async def test_dialect_none_sends_no_constraint(fault_server, backends):
    await backends(fault_server.url, structured="none").complete(request())
    (body,) = fault_server.bodies
    assert "response_format" not in body and "structured_outputs" not in body


async def test_cache_salt_is_sent_to_vllm_by_default_and_elsewhere_on_request(
        fault_server, backends):
    await backends(fault_server.url, structured="structured_outputs").complete(request())
    await backends(fault_server.url, structured="json_schema").complete(request())
    await backends(fault_server.url, structured="json_schema",
                   send_cache_salt=True).complete(request())
    assert [body.get("cache_salt") for body in fault_server.bodies] == [
        "salt-tenant-a", None, "salt-tenant-a"]


async def test_decoding_parameters_reach_the_server(fault_server, backends):
    await backends(fault_server.url).complete(
        request(temperature=0.3, max_tokens=77, params={"top_p": 0.9, "seed": 7}))
    (body,) = fault_server.bodies
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["seed"]) == (
        0.3, 77, 0.9, 7)
    assert body["model"] == "m"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


async def test_usage_comes_from_the_response(fault_server, backends):
    completion = await backends(fault_server.url).complete(request())
    expected = fault_server._usage(fault_server.bodies[0], completion.text)
    assert completion.usage.prompt_tokens == expected["prompt_tokens"]
    assert completion.usage.completion_tokens == expected["completion_tokens"]


async def test_usage_is_counted_locally_when_the_server_omits_it(backends):
    with FaultServer(include_usage=False) as server:
        completion = await backends(server.url).complete(request())
    assert completion.usage.prompt_tokens == count_prompt_tokens(request().messages)
    assert completion.usage.completion_tokens == count_text_tokens(completion.text)


async def test_sequential_calls_reuse_one_keep_alive_connection(fault_server, backends):
    backend = backends(fault_server.url)
    for _ in range(5):
        await backend.complete(request())
    assert fault_server.completions == 5
    assert fault_server.connections == 1


async def test_concurrent_calls_are_not_serialized(backends):
    calls, latency = 10, 0.3
    with FaultServer(latency=latency) as server:
        backend = backends(server.url)
        started = time.monotonic()
        await asyncio.gather(*(backend.complete(request()) for _ in range(calls)))
        elapsed = time.monotonic() - started
    # Serialized, this would take calls * latency = 3 s.
    assert elapsed < calls * latency / 2


async def test_replicas_share_sequential_load_evenly(backends):
    with FaultServer() as first, FaultServer() as second:
        backend = backends(first.url, second.url)
        for _ in range(10):
            await backend.complete(request())
        assert (first.completions, second.completions) == (5, 5)


async def test_concurrent_load_follows_replica_weights(backends):
    with FaultServer(latency=0.2) as heavy, FaultServer(latency=0.2) as light:
        backend = backends(heavy.url, light.url, weights=[3, 1])
        await asyncio.gather(*(backend.complete(request()) for _ in range(40)))
        assert heavy.completions + light.completions == 40
        assert 27 <= heavy.completions <= 33


async def test_streaming_yields_the_reply_in_chunks(fault_server, backends):
    backend = backends(fault_server.url)
    items = [item async for item in backend.stream(request())]
    chunks = [item for item in items if isinstance(item, str)]
    assert len(chunks) > 1
    assert json.loads("".join(chunks)) == {"label": "x"}
    assert fault_server.bodies[0]["stream"] is True


async def test_a_stream_reports_the_servers_usage_like_the_same_call_in_one_body(
        fault_server, backends):
    backend = backends(fault_server.url)
    whole = await backend.complete(request())
    items = [item async for item in backend.stream(request())]
    # The last item is the server's count, exactly what the one-body answer reported.
    assert items[-1] == whole.usage
    assert fault_server.bodies[1]["stream_options"] == {"include_usage": True}


async def test_a_stream_from_a_server_without_usage_reports_none(backends):
    with FaultServer(include_usage=False) as server:
        items = [item async for item in backends(server.url).stream(request())]
    assert all(isinstance(item, str) for item in items)


async def test_streaming_maps_a_server_error(fault_server, backends):
    fault_server.script(Fault.error(503, retry_after=2))
    with pytest.raises(BackendError) as caught:
        [chunk async for chunk in backends(fault_server.url).stream(request())]
    assert (caught.value.provider_status, caught.value.retryable,
            caught.value.retry_after) == (503, True, 2.0)


async def test_schema_violating_content_is_returned_raw_for_the_output_pipeline(
        fault_server, backends):
    fault_server.script(Fault.schema_violation())
    completion = await backends(fault_server.url).complete(request())
    assert json.loads(completion.text) == {"__fault__": "schema_violation"}


@pytest.mark.parametrize(("fault", "retryable", "status"), [
    (Fault.error(400), False, 400),
    (Fault.error(401), False, 401),
    (Fault.error(404), False, 404),
    (Fault.error(500), True, 500),
    (Fault.rate_limited(3), True, 429),
    (Fault.reset(), True, None),
    (Fault.malformed(), True, None),
])
async def test_faults_become_backend_errors(fault_server, backends, fault, retryable, status):
    fault_server.script(fault)
    with pytest.raises(BackendError) as caught:
        await backends(fault_server.url).complete(request())
    assert caught.value.retryable is retryable
    assert caught.value.provider_status == status
    assert caught.value.backend == "vllm"
    assert caught.value.__cause__ is not None


async def test_a_hanging_server_is_cut_off_at_the_request_timeout(fault_server, backends):
    fault_server.script(Fault.hang())
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await backends(fault_server.url).complete(request(timeout=0.5))
    assert caught.value.timeout and caught.value.retryable
    assert 0.4 < time.monotonic() - started < 2.0


async def test_a_refused_connection_is_retryable(backends):
    with FaultServer() as server:
        url = server.url
    with pytest.raises(BackendError) as caught:
        await backends(url).complete(request())
    assert caught.value.retryable and caught.value.provider_status is None


async def test_the_api_key_is_sent_but_never_shown_in_errors(fault_server, monkeypatch):
    key = "sk-live-0123456789abcdef"
    monkeypatch.setenv("VLLM_TEST_KEY", key)
    backend = build_backend("vllm", BackendConfig(
        kind="openai", model="m", options={"base_urls": [fault_server.url],
                                           "api_key_env": "VLLM_TEST_KEY"}))
    try:
        await backend.complete(request())
        # A provider that echoes the credential back in its error body.
        fault_server.script(Fault.error(401, body=json.dumps(
            {"error": {"message": f"invalid key {key} (Authorization: Bearer {key})"}})))
        with pytest.raises(BackendError) as caught:
            await backend.complete(request())
    finally:
        await backend.aclose()
    assert fault_server.received[0].headers["authorization"] == f"Bearer {key}"
    assert key not in str(caught.value)
    assert "401" in str(caught.value)


def test_config_is_checked_with_paths_and_fixes(monkeypatch):
    monkeypatch.delenv("MISSING_KEY_ENV", raising=False)
    cases = [
        ({"base_urls": ["http://h/v1"], "typo": 1}, "backends.v.options.typo"),
        ({"base_urls": []}, "backends.v.options.base_urls"),
        ({"base_urls": ["ftp://h"]}, "backends.v.options.base_urls"),
        ({"base_urls": ["http://h/v1"], "headers": {"Authorization": "Bearer x"}},
         "backends.v.options.headers"),
        ({"base_urls": ["http://a/v1", "http://b/v1"], "weights": [1]}, "backends.v.options"),
        ({"base_urls": ["http://h/v1"], "api_key_env": "MISSING_KEY_ENV"},
         "backends.v.options.api_key_env"),
    ]
    for options, path in cases:
        with pytest.raises(ContractError) as caught:
            build_backend("v", BackendConfig(kind="openai", model="m", options=options))
        assert caught.value.issues[0].path.startswith(path), (options, caught.value)
    with pytest.raises(ContractError) as caught:
        build_backend("v", BackendConfig(kind="openai", structured="grammar",
                                         options={"base_urls": ["http://h/v1"]}))
    assert caught.value.issues[0].path == "backends.v.structured"


async def test_config_defaults_to_openai_json_schema_and_declares_capabilities():
    backend = build_backend("v", BackendConfig(
        kind="openai", model="m", context_window=32768, tokenizer="cl100k_base",
        options={"base_urls": ["http://127.0.0.1:1/v1"]}))
    try:
        caps = backend.capabilities
        assert (caps.structured, caps.streaming, caps.context_window) == (
            "json_schema", True, 32768)
    finally:
        await backend.aclose()


def test_importing_the_adapter_does_not_import_litellm():
    code = (
        "import sys\n"
        "from featurelm.engine.backends import build_backend\n"
        "from featurelm.engine.config import BackendConfig, RouteConfig\n"
        "from featurelm.engine.dispatch import Dispatcher\n"
        "import featurelm.engine.backends.openai_compat, featurelm.engine.costs\n"
        "import featurelm.engine.testing\n"
        "b = build_backend('v', BackendConfig(kind='openai', model='m',"
        " options={'base_urls': ['http://127.0.0.1:1/v1']}))\n"
        "Dispatcher({'v': b}, {'default': RouteConfig(backends=['v'])})\n"
        "assert 'featurelm.engine.backends.openai_compat' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('litellm', 'openai')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"
