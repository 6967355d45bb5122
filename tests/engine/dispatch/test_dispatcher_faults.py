"""The dispatcher surviving backend faults, over real HTTP to fault-injecting servers."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from featurelm.engine.backends.openai_compat import OpenAICompatBackend
from featurelm.engine.config import BackendConfig, RouteConfig
from featurelm.engine.dispatch import (
    BreakerPolicy,
    BreakerState,
    CallRecord,
    Dispatcher,
    RetryPolicy,
)
from featurelm.engine.errors import BackendError, InputError
from featurelm.engine.testing import Fault, FaultPlan, FaultServer
from featurelm.engine.tokens import prompt_token_bound
from featurelm.engine.types import CompletionRequest, Message

REQUEST = CompletionRequest(messages=(Message("user", "Where is my parcel?"),), max_tokens=64,
                            cache_salt="salt-a", labels={"tenant": "acme", "feature": "triage"})
#: Short waits keep the suite fast; the policies under test are the same.
FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, max_retry_after=5.0)


@pytest.fixture
def servers() -> Iterator[Callable[..., FaultServer]]:
    started: list[FaultServer] = []

    def start(**kwargs: object) -> FaultServer:
        server = FaultServer(**kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def dispatcher_for() -> AsyncIterator[Callable[..., Dispatcher]]:
    made: list[Dispatcher] = []

    def make(chain: dict[str, FaultServer], *, retries: int = 2,
             windows: dict[str, int] | None = None,
             retry: RetryPolicy = FAST_RETRY, breaker: BreakerPolicy | None = None,
             on_call: Callable[[CallRecord], None] | None = None,
             configs: dict[str, BackendConfig] | None = None) -> Dispatcher:
        backends = {
            name: OpenAICompatBackend(name, model=f"model-{name}", base_urls=[server.url],
                                      structured="structured_outputs",
                                      context_window=(windows or {}).get(name, 8192))
            for name, server in chain.items()}
        dispatcher = Dispatcher(backends, {"main": RouteConfig(backends=list(chain),
                                                               retries=retries)},
                                retry=retry, breaker=breaker or BreakerPolicy(),
                                on_call=on_call, backend_configs=configs)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        for backend in dispatcher.backends.values():
            await backend.aclose()


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


async def test_falls_back_to_the_second_backend_when_the_first_keeps_failing_with_500(
        servers, dispatcher_for):
    first = servers(plan=FaultPlan(rates=[(1.0, Fault.error(500))]))
    second = servers()
    dispatcher = dispatcher_for({"first": first, "second": second}, retries=2)
    completion = await dispatcher.complete("main", REQUEST, deadline=soon())
    assert completion.backend == "second"
    assert (first.completions, second.completions) == (3, 1)


async def test_falls_back_when_the_first_backend_resets_connections(servers, dispatcher_for):
    first = servers(plan=FaultPlan(rates=[(1.0, Fault.reset())]))
    second = servers()
    dispatcher = dispatcher_for({"first": first, "second": second}, retries=1)
    completion = await dispatcher.complete("main", REQUEST, deadline=soon())
    assert completion.backend == "second"
    assert first.completions == 2


async def test_a_retried_backend_that_recovers_answers(servers, dispatcher_for):
    only = servers()
    only.script(Fault.error(503), Fault.reset())
    dispatcher = dispatcher_for({"only": only}, retries=2)
    completion = await dispatcher.complete("main", REQUEST, deadline=soon())
    assert completion.backend == "only"
    assert only.completions == 3


async def test_429_is_retried_after_the_servers_retry_after(servers, dispatcher_for):
    only = servers()
    only.script(Fault.rate_limited(retry_after=0.6))
    dispatcher = dispatcher_for({"only": only})
    started = time.monotonic()
    await dispatcher.complete("main", REQUEST, deadline=soon())
    assert time.monotonic() - started >= 0.6
    assert only.completions == 2


async def test_retry_after_is_capped(servers, dispatcher_for):
    only = servers()
    only.script(Fault.rate_limited(retry_after=3600))
    retry = RetryPolicy(base_delay=0.01, max_delay=0.05, max_retry_after=0.3)
    dispatcher = dispatcher_for({"only": only}, retry=retry)
    started = time.monotonic()
    await dispatcher.complete("main", REQUEST, deadline=soon(10))
    assert 0.3 <= time.monotonic() - started < 5
    assert only.completions == 2


async def test_a_retry_after_beyond_the_deadline_moves_on_to_the_next_backend(
        servers, dispatcher_for):
    first = servers()
    first.script(Fault.rate_limited(retry_after=4))
    second = servers()
    dispatcher = dispatcher_for({"first": first, "second": second})
    started = time.monotonic()
    completion = await dispatcher.complete("main", REQUEST, deadline=soon(3))
    assert completion.backend == "second"
    assert time.monotonic() - started < 2.5


async def test_400_is_not_retried(servers, dispatcher_for):
    only = servers()
    only.script(Fault.error(400))
    dispatcher = dispatcher_for({"only": only}, retries=3)
    with pytest.raises(BackendError) as caught:
        await dispatcher.complete("main", REQUEST, deadline=soon())
    assert caught.value.provider_status == 400
    assert only.completions == 1


@pytest.mark.parametrize("status", [401, 404])
async def test_auth_and_not_found_are_not_retried(servers, dispatcher_for, status):
    only = servers()
    only.script(Fault.error(status))
    dispatcher = dispatcher_for({"only": only}, retries=3)
    with pytest.raises(BackendError):
        await dispatcher.complete("main", REQUEST, deadline=soon())
    assert only.completions == 1


async def test_a_hanging_backend_cannot_hold_the_call_past_its_deadline(servers, dispatcher_for):
    only = servers(plan=FaultPlan(rates=[(1.0, Fault.hang())]))
    dispatcher = dispatcher_for({"only": only}, retries=5)
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await dispatcher.complete("main", REQUEST, deadline=soon(1.0))
    elapsed = time.monotonic() - started
    assert caught.value.timeout
    assert 0.9 <= elapsed < 1.75


async def test_each_attempt_gets_only_the_time_left(servers, dispatcher_for):
    first = servers(plan=FaultPlan(rates=[(1.0, Fault.hang())]))
    second = servers(plan=FaultPlan(rates=[(1.0, Fault.hang())]))
    dispatcher = dispatcher_for({"first": first, "second": second}, retries=0)
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await dispatcher.complete("main", REQUEST, deadline=soon(1.6))
    assert caught.value.timeout
    # The first backend got half the time (one more backend waits after it), the second the
    # rest: both were asked, and the call still ended at its deadline. Each share is long
    # enough for a request to arrive on a busy machine.
    assert time.monotonic() - started < 2.4
    assert first.completions == 1 and second.completions == 1


async def test_a_hung_first_backend_leaves_its_fallback_time_to_answer(servers, dispatcher_for):
    hung = servers(plan=FaultPlan(rates=[(1.0, Fault.hang())]))
    healthy = servers()
    dispatcher = dispatcher_for({"first": hung, "second": healthy}, retries=2)
    started = time.monotonic()
    completion = await dispatcher.complete("main", REQUEST, deadline=soon(2.0))
    assert completion.backend == "second"
    # Half the deadline on the hung one, no retry there (it ran out its share), then the next.
    assert 0.9 < time.monotonic() - started < 1.6
    assert hung.completions == 1


async def test_the_breaker_opens_then_half_opens_and_closes(servers, dispatcher_for):
    flaky = servers(plan=FaultPlan(rates=[(1.0, Fault.error(500))]))
    dispatcher = dispatcher_for({"flaky": flaky}, retries=0,
                                breaker=BreakerPolicy(failure_threshold=3, cooldown=0.5))
    breaker = dispatcher.breakers["flaky"]
    for _ in range(3):
        with pytest.raises(BackendError):
            await dispatcher.complete("main", REQUEST, deadline=soon())
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(BackendError) as caught:
        await dispatcher.complete("main", REQUEST, deadline=soon())
    assert "circuit breaker open" in str(caught.value)
    assert flaky.completions == 3  # the open breaker kept the call away from the server

    flaky.plan.rates.clear()  # the backend recovers
    await asyncio.sleep(0.55)
    assert breaker.state is BreakerState.HALF_OPEN
    completion = await dispatcher.complete("main", REQUEST, deadline=soon())
    assert completion.backend == "flaky"
    assert breaker.state is BreakerState.CLOSED
    assert flaky.completions == 4


async def test_an_open_breaker_sends_calls_straight_to_the_fallback(servers, dispatcher_for):
    first = servers(plan=FaultPlan(rates=[(1.0, Fault.error(502))]))
    second = servers()
    dispatcher = dispatcher_for({"first": first, "second": second}, retries=0,
                                breaker=BreakerPolicy(failure_threshold=2, cooldown=60))
    for _ in range(4):
        assert (await dispatcher.complete("main", REQUEST, deadline=soon())).backend == "second"
    assert first.completions == 2
    assert second.completions == 4


async def test_context_length_errors_fall_through_to_a_larger_window(servers, dispatcher_for):
    small = servers(plan=FaultPlan(rates=[(1.0, Fault.context_length())]))
    same = servers()
    large = servers()
    dispatcher = dispatcher_for({"small": small, "same": same, "large": large},
                                windows={"small": 4096, "same": 4096, "large": 32768})
    completion = await dispatcher.complete("main", REQUEST, deadline=soon())
    assert completion.backend == "large"
    assert (small.completions, same.completions, large.completions) == (1, 0, 1)


async def test_an_input_too_long_for_every_backend_is_refused_before_any_call(
        servers, dispatcher_for):
    only = servers()
    dispatcher = dispatcher_for({"only": only}, windows={"only": 300})
    long_request = CompletionRequest(messages=(Message("user", "parcel " * 400),),
                                     max_tokens=64)
    with pytest.raises(InputError) as caught:
        await dispatcher.complete("main", long_request, deadline=soon())
    assert "300 tokens" in str(caught.value)
    assert only.completions == 0
    assert dispatcher.routes_fitting(long_request) == []
    assert dispatcher.routes_fitting(REQUEST) == ["main"]


async def test_backends_too_small_for_the_prompt_are_skipped(servers, dispatcher_for):
    small, large = servers(), servers()
    dispatcher = dispatcher_for({"small": small, "large": large},
                                windows={"small": 300, "large": 8192})
    long_request = CompletionRequest(messages=(Message("user", "parcel " * 400),),
                                     max_tokens=64)
    assert dispatcher.backends_fitting("main", long_request) == ["large"]
    completion = await dispatcher.complete("main", long_request, deadline=soon())
    assert completion.backend == "large"
    assert small.completions == 0


async def test_only_prompts_near_a_window_are_tokenized(servers, dispatcher_for, monkeypatch):
    dispatcher = dispatcher_for({"small": servers(), "large": servers()},
                                windows={"small": 300, "large": 8192})
    # 420 bytes: over the small window by the byte bound, inside it by the exact count.
    near = CompletionRequest(messages=(Message("user", "parcel " * 60),), max_tokens=64)
    assert prompt_token_bound(near.messages) + 64 > 300
    assert dispatcher.backends_fitting("main", near) == ["small", "large"]

    def no_tokenizer(*args: object) -> None:
        raise AssertionError("a prompt that surely fits was tokenized")

    monkeypatch.setattr("featurelm.engine.tokens.get_encoding", no_tokenizer)
    short = CompletionRequest(messages=(Message("user", "parcel"),), max_tokens=64)
    assert dispatcher.backends_fitting("main", short) == ["small", "large"]


async def test_every_call_is_recorded_with_attempts_usage_cost_and_labels(
        servers, dispatcher_for):
    records: list[CallRecord] = []
    only = servers()
    only.script(Fault.error(500))
    configs = {"only": BackendConfig(kind="openai", model="model-only",
                                     input_price_per_mtok=2.0, output_price_per_mtok=10.0)}
    dispatcher = dispatcher_for({"only": only}, on_call=records.append, configs=configs)
    dispatched = await dispatcher.dispatch("main", REQUEST, deadline=soon())
    (record,) = records
    assert record is dispatched.record
    usage = dispatched.completion.usage
    assert (record.backend, record.attempts, record.usage) == ("only", 2, usage)
    assert record.cost_usd == pytest.approx(
        (usage.prompt_tokens * 2.0 + usage.completion_tokens * 10.0) / 1e6)
    assert record.labels == {"tenant": "acme", "feature": "triage"}
    assert record.error is None

    only.script(Fault.error(400))
    with pytest.raises(BackendError):
        await dispatcher.complete("main", REQUEST, deadline=soon())
    assert records[-1].error is not None and records[-1].attempts == 1


async def test_stream_falls_back_before_the_first_chunk(servers, dispatcher_for):
    first = servers(plan=FaultPlan(rates=[(1.0, Fault.error(500))]))
    second = servers()
    dispatcher = dispatcher_for({"first": first, "second": second}, retries=1)
    chunks: list[str] = []

    async def show(text: str) -> None:
        chunks.append(text)

    dispatched = await dispatcher.dispatch("main", REQUEST, deadline=soon(), on_text=show)
    assert "".join(chunks) == "ok"
    assert dispatched.completion.backend == dispatched.record.backend == "second"
    assert first.completions == 2
    assert second.bodies[0]["stream"] is True
