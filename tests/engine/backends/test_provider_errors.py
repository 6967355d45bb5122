"""Every provider and transport exception maps to a BackendError with the right verdict."""

import email.utils
import inspect
import json
import time
from types import ModuleType

import aiohttp
import httpx
import pytest

import featurelm.engine.backends.hosted  # noqa: F401  (loads litellm offline, as a hosted backend does)
from featurelm.engine.backends.provider_errors import (
    MalformedResponse,
    ProviderStatusError,
    classify_status,
    map_exception,
    mapped_errors,
    parse_retry_after,
    rule_for,
)
from featurelm.engine.errors import BackendError

litellm = pytest.importorskip("litellm")
openai = pytest.importorskip("openai")

#: Exported classes that no chat-completion call can raise (webhook signature checks).
NOT_ON_THE_CALL_PATH = {"InvalidWebhookSignatureError"}


def exception_classes(module: ModuleType, names: list[str] | None = None):
    for name in names if names is not None else dir(module):
        obj = getattr(module, name)
        if (inspect.isclass(obj) and issubclass(obj, BaseException)
                and not name.startswith("_") and name not in NOT_ON_THE_CALL_PATH):
            yield obj


@pytest.mark.parametrize("module", ["aiohttp", "httpx", "openai", "litellm.exceptions"])
def test_every_exception_a_provider_can_raise_has_a_rule(module):
    mod = {"aiohttp": aiohttp.client_exceptions, "httpx": httpx, "openai": openai,
           "litellm.exceptions": litellm.exceptions}[module]
    names = list(mod.__all__) if mod in (httpx, aiohttp.client_exceptions) else None
    unmapped = [cls.__qualname__ for cls in exception_classes(mod, names) if rule_for(cls) is None]
    assert unmapped == []


def test_os_level_and_decoding_failures_have_rules():
    for cls in (TimeoutError, ConnectionResetError, ConnectionRefusedError,
                json.JSONDecodeError, UnicodeDecodeError, MalformedResponse):
        assert rule_for(cls) is not None, cls


def test_bugs_are_not_disguised_as_provider_failures():
    for bug in (KeyError("x"), TypeError("x"), AttributeError("x")):
        with pytest.raises(type(bug)), mapped_errors("b"):
            raise bug


def test_mapping_chains_the_original_exception():
    original = httpx.ReadError("reset by peer")
    with pytest.raises(BackendError) as caught, mapped_errors("gpu-pool"):
        raise original
    assert caught.value.__cause__ is original
    assert caught.value.backend == "gpu-pool"
    assert caught.value.retryable


@pytest.mark.parametrize(("status", "retryable"), [
    (400, False), (401, False), (403, False), (404, False), (422, False),
    (408, True), (409, True), (429, True), (500, True), (502, True), (503, True), (504, True),
])
def test_status_codes_are_classified(status, retryable):
    assert classify_status(status).retryable is retryable


@pytest.mark.parametrize("body", [
    "This model's maximum context length is 2048 tokens. However, you requested 4000 tokens",
    '{"error": {"code": "context_length_exceeded"}}',
    "Requested tokens (5000) exceed context window of 4096",
    "prompt is too long: 210000 tokens > 200000 maximum",
])
def test_context_length_errors_are_recognised(body):
    failure = classify_status(400, body)
    assert failure.context_length and not failure.retryable


def test_other_bad_requests_are_not_context_length_errors():
    assert not classify_status(400, '{"error": "temperature must be <= 2"}').context_length
    assert not classify_status(500, "maximum context length exceeded").context_length


def test_retry_after_forms():
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"Retry-After": "soon"}) is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after({"Retry-After": date}) <= 30  # type: ignore[operator]
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": past}) == 0.0


def test_http_status_errors_carry_status_and_retry_after(caplog):
    request = httpx.Request("POST", "http://h/v1/chat/completions")
    response = httpx.Response(429, headers={"Retry-After": "3"}, text="slow down",
                              request=request)
    error = map_exception(httpx.HTTPStatusError("429", request=request, response=response), "b")
    assert error is not None
    assert (error.provider_status, error.retryable, error.retry_after) == (429, True, 3.0)
    # The provider's body is for the operator's log, not for the caller's error.
    assert "slow down" not in str(error) and "slow down" in caplog.text


def test_the_http_adapters_status_errors_carry_status_body_and_retry_after(caplog):
    error = map_exception(ProviderStatusError(503, "overloaded", {"retry-after-ms": "1500"}),
                          "gpu")
    assert error is not None
    assert (error.provider_status, error.retryable, error.retry_after) == (503, True, 1.5)
    assert "overloaded" not in str(error) and "overloaded" in caplog.text
    too_long = map_exception(ProviderStatusError(400, "maximum context length is 8192", {}), "g")
    assert too_long is not None and too_long.context_length and not too_long.retryable


@pytest.mark.parametrize(("exc", "retryable", "timeout"), [
    (aiohttp.ServerDisconnectedError(), True, False),
    (aiohttp.ClientPayloadError("cut"), True, False),
    (aiohttp.ServerTimeoutError("slow"), True, True),
    (aiohttp.ClientConnectionResetError("reset"), True, False),
    (aiohttp.InvalidURL("nope"), False, False),
])
def test_aiohttp_transport_failures_are_classified(exc, retryable, timeout):
    error = map_exception(exc, "gpu")
    assert error is not None
    assert (error.retryable, error.timeout) == (retryable, timeout)


def _response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers,
                          request=httpx.Request("POST", "https://api.example/v1"))


LITELLM_CASES = [
    (lambda e: e.RateLimitError("slow down", "openai", "gpt",
                                response=_response(429, {"retry-after": "4"})),
     {"retryable": True, "provider_status": 429, "retry_after": 4.0}),
    (lambda e: e.Timeout("timed out", "gpt", "openai"),
     {"retryable": True, "timeout": True}),
    (lambda e: e.APIConnectionError("refused", "openai", "gpt"),
     {"retryable": True, "timeout": False}),
    (lambda e: e.ContextWindowExceededError("too long", "gpt", "openai"),
     {"retryable": False, "context_length": True, "provider_status": 400}),
    (lambda e: e.ServiceUnavailableError("down", "openai", "gpt"),
     {"retryable": True, "provider_status": 503}),
    (lambda e: e.InternalServerError("boom", "openai", "gpt"),
     {"retryable": True, "provider_status": 500}),
    (lambda e: e.BadGatewayError("gateway", "openai", "gpt"),
     {"retryable": True, "provider_status": 502}),
    (lambda e: e.BadRequestError("bad", "gpt", "openai"),
     {"retryable": False, "provider_status": 400}),
    (lambda e: e.AuthenticationError("no key", "openai", "gpt"),
     {"retryable": False, "provider_status": 401}),
    (lambda e: e.PermissionDeniedError("no", "openai", "gpt", response=_response(403)),
     {"retryable": False, "provider_status": 403}),
    (lambda e: e.NotFoundError("no model", "gpt", "openai"),
     {"retryable": False, "provider_status": 404}),
    (lambda e: e.ContentPolicyViolationError("policy", "gpt", "openai"),
     {"retryable": False, "context_length": False}),
    (lambda e: e.BudgetExceededError(10.0, 5.0),
     {"retryable": False}),
    (lambda e: e.APIResponseValidationError("bad body", "openai", "gpt"),
     {"retryable": True}),
    (lambda e: e.APIError(529, "overloaded", "anthropic", "claude"),
     {"retryable": True, "provider_status": 529}),
]


@pytest.mark.parametrize(("make", "expected"), LITELLM_CASES)
def test_litellm_exceptions_map_to_backend_errors(make, expected):
    exc = make(litellm.exceptions)
    with pytest.raises(BackendError) as caught, mapped_errors("hosted"):
        raise exc
    assert caught.value.__cause__ is exc
    for field, value in expected.items():
        assert getattr(caught.value, field) == value, field


def test_credentials_are_scrubbed_from_messages():
    key = "sk-proj-abcdef0123456789"
    exc = litellm.exceptions.AuthenticationError(f"Incorrect API key provided: {key}",
                                                 "openai", "gpt")
    error = map_exception(exc, "hosted", secrets=[key])
    assert error is not None and key not in str(error)
    unregistered = map_exception(
        httpx.ConnectError(f"Authorization: Bearer {key}"), "b")
    assert unregistered is not None and key not in str(unregistered)
