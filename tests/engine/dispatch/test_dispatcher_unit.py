"""Dispatcher behaviour that needs no network: deadlines per attempt, streaming, config."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from featurelm.engine.backends.scripted import ScriptedBackend
from featurelm.engine.config import BackendConfig, EngineConfig, RouteConfig
from featurelm.engine.dispatch import Dispatcher, RetryPolicy
from featurelm.engine.errors import BackendError, ContractError
from featurelm.engine.types import Capabilities, Completion, CompletionRequest, Message

REQUEST = CompletionRequest(messages=(Message("user", "hi"),))
FAST = RetryPolicy(base_delay=0.01, max_delay=0.02)


def flaky(times: int, reply: str = "ok") -> list[str | BaseException]:
    failures: list[str | BaseException] = [
        BackendError("boom", backend="b", retryable=True, provider_status=503)
        for _ in range(times)]
    return [*failures, reply]


async def test_each_attempt_is_told_the_time_left_before_the_deadline():
    backend = ScriptedBackend(flaky(2), name="b")
    dispatcher = Dispatcher({"b": backend}, {"r": RouteConfig(backends=["b"])}, retry=FAST)
    deadline = time.monotonic() + 2.0
    await dispatcher.complete("r", REQUEST, deadline=deadline)
    timeouts = [r.timeout for r in backend.requests]
    assert len(timeouts) == 3
    assert all(t is not None and 0 < t <= 2.0 for t in timeouts)
    assert timeouts == sorted(timeouts, reverse=True)


async def test_a_backend_ignoring_its_timeout_is_still_cut_off():
    slow = ScriptedBackend(["late"], name="slow", delay=5)
    dispatcher = Dispatcher({"slow": slow}, {"r": RouteConfig(backends=["slow"])})
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await dispatcher.complete("r", REQUEST, deadline=time.monotonic() + 0.3)
    assert caught.value.timeout
    assert time.monotonic() - started < 1.0


async def test_the_configured_request_timeout_is_the_default_deadline():
    slow = BackendConfig(kind="scripted", options={"replies": ["late"], "delay": 5})
    config = EngineConfig(backends={"slow": slow}, routes={"r": RouteConfig(backends=["slow"])},
                          limits={"request_timeout_s": 0.3})
    dispatcher = Dispatcher.from_config(config)
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await dispatcher.complete("r", REQUEST)
    assert caught.value.timeout
    assert time.monotonic() - started < 1.5


class BreaksMidStream:
    name = "mid"
    model = "m"
    capabilities = Capabilities(streaming=True)

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: CompletionRequest) -> Completion:
        raise AssertionError("not used")

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str]:
        self.calls += 1
        yield "first chunk"
        await asyncio.sleep(0)
        raise BackendError("dropped", backend="mid", retryable=True)

    async def aclose(self) -> None:
        return None


async def test_a_stream_that_breaks_after_its_first_chunk_is_not_retried():
    mid, spare = BreaksMidStream(), ScriptedBackend(["spare"], name="spare")
    dispatcher = Dispatcher({"mid": mid, "spare": spare},
                            {"r": RouteConfig(backends=["mid", "spare"], retries=3)}, retry=FAST)
    received: list[str] = []

    async def show(text: str) -> None:
        received.append(text)

    with pytest.raises(BackendError):
        await dispatcher.dispatch("r", REQUEST, deadline=time.monotonic() + 5, on_text=show)
    assert received == ["first chunk"]
    assert mid.calls == 1 and spare.calls == 0


async def test_streaming_retries_a_backend_that_fails_before_its_first_chunk():
    backend = ScriptedBackend(flaky(1, "streamed reply"), name="b")
    dispatcher = Dispatcher({"b": backend}, {"r": RouteConfig(backends=["b"])}, retry=FAST)
    chunks: list[str] = []

    async def show(text: str) -> None:
        chunks.append(text)

    dispatched = await dispatcher.dispatch("r", REQUEST, deadline=time.monotonic() + 5,
                                           on_text=show)
    assert "".join(chunks) == dispatched.completion.text == "streamed reply"
    assert len(chunks) > 1 and backend.calls == 2


def test_routes_must_name_known_backends():
    with pytest.raises(ContractError) as caught:
        Dispatcher({"a": ScriptedBackend(name="a")}, {"r": RouteConfig(backends=["a", "zz"])})
    assert caught.value.issues[0].path == "routes.r.backends"


async def test_an_unknown_route_is_a_contract_error():
    dispatcher = Dispatcher({"a": ScriptedBackend(["x"], name="a")},
                            {"r": RouteConfig(backends=["a"])})
    with pytest.raises(ContractError):
        await dispatcher.complete("nope", REQUEST, deadline=time.monotonic() + 1)


async def test_from_config_builds_and_wraps_every_backend():
    config = EngineConfig(
        backends={"a": BackendConfig(kind="scripted", options={"replies": ["from a"]}),
                  "b": BackendConfig(kind="scripted", options={"replies": ["from b"]})},
        routes={"default": RouteConfig(backends=["b", "a"])})
    wrapped: list[str] = []

    def wrapper(backend):
        wrapped.append(backend.name)
        return backend

    dispatcher = Dispatcher.from_config(config, backend_wrapper=wrapper)
    assert sorted(wrapped) == ["a", "b"]
    completion = await dispatcher.complete("default", REQUEST,
                                           deadline=time.monotonic() + 1)
    assert completion.text == "from b"
