"""Decides which backend answers each call: fallback chains, retries, deadlines, breakers, budgets.

A route is an ordered chain of backends. Each call gets one deadline covering every retry
and fallback; retryable failures are retried with backoff on the same backend, anything else
(or a backend whose breaker opened) moves on to the next one in the chain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

from featurelm.engine.backends import build_backend
from featurelm.engine.backends.base import Backend, StreamingBackend
from featurelm.engine.backends.provider_errors import (
    circuit_open,
    deadline_exceeded,
    mapped_errors,
)
from featurelm.engine.config import BackendConfig, EngineConfig, RouteConfig
from featurelm.engine.costs import cost_usd
from featurelm.engine.dispatch.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from featurelm.engine.dispatch.retry import RetryPolicy
from featurelm.engine.errors import BackendError, ContractError, ContractIssue, TooLargeError
from featurelm.engine.tokens import (
    CountingBackend,
    backend_prompt_tokens,
    count_prompt_tokens,
    count_text_tokens,
    prompt_token_bound,
)
from featurelm.engine.types import Completion, CompletionRequest, Usage

if TYPE_CHECKING:
    from featurelm.engine.telemetry import Spans

T = TypeVar("T")
#: Receives a reply's text as it is generated (see `Dispatcher.dispatch`).
TextSink = Callable[[str], Awaitable[None]]
DEFAULT_RETRY = RetryPolicy()
DEFAULT_BREAKER = BreakerPolicy()

log = logging.getLogger("featurelm.dispatch")


@dataclass(frozen=True)
class CallRecord:
    """Usage of one dispatched call, attributed through the request's labels."""

    route: str
    backend: str | None
    model: str | None
    attempts: int
    usage: Usage
    cost_usd: float
    latency_ms: float
    labels: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    #: A hedged call's other half, cancelled once this call had its answer: its usage is the
    #: prompt the backend was sent (output unknown, counted as none).
    cancelled: bool = False


@dataclass(frozen=True)
class Dispatched:
    completion: Completion
    record: CallRecord


def _counts_against(error: BackendError) -> bool:
    # A server that answers 400/404 or "too long" is healthy; the request was the problem.
    return error.retryable or error.timeout or error.provider_status is None


class _Run:
    """State of one call as it walks its route: deadline, attempts, last error, window floor."""

    def __init__(self, dispatcher: Dispatcher, route: str, request: CompletionRequest,
                 deadline: float):
        self.d = dispatcher
        self.route = route
        self.request = request
        self.deadline = deadline
        self.started = time.monotonic()
        self.attempts = 0
        self.last_error: BackendError | None = None
        self.last_backend: str | None = None
        #: After a context-length error, only backends with a larger window are worth trying.
        self.window_floor = 0
        #: Whether the current attempt has handed text to the caller (it cannot be taken back).
        self.sent = False
        self.after = 0
        self.attempt_until = deadline

    def candidates(self, names: list[str]) -> Iterator[tuple[str, Backend]]:
        for position, name in enumerate(names):
            #: Backends after this one, each owed a share of the time left (see attempt_until).
            self.after = len(names) - position - 1
            backend = self.d.backends[name]
            if backend.capabilities.context_window <= self.window_floor:
                continue
            if not self.d.breakers[name].allow():
                self.last_error = self.last_error or circuit_open(name)
                continue
            yield name, backend

    def attempt_request(self, name: str) -> CompletionRequest:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.d.breakers[name].release()
            raise self.deadline_error(name)
        self.attempts += 1
        self.last_backend = name
        self.attempt_until = time.monotonic() + remaining / (1 + self.after)
        return dataclasses.replace(self.request, timeout=self.attempt_until - time.monotonic())

    async def guard(self, name: str, call: Awaitable[T], *, whole_deadline: bool = False) -> T:
        """Await `call` within this attempt's share of the time left; a backend ignoring its
        timeout still stops. An attempt gets the time left divided among itself and the
        backends after it on the route, so a hung backend cannot starve its fallbacks."""
        until = self.deadline if whole_deadline else self.attempt_until
        with mapped_errors(name):
            async with asyncio.timeout(until - time.monotonic()):
                return await call

    async def should_retry(self, name: str, error: BackendError, retry: int) -> bool:
        """Record the failure; sleep and return True if the same backend is worth another try."""
        self.last_error = error
        # At warning: the caller sees at most a 502; the operator needs the backend's words
        # (the log line carries the request id, as the call's trace does).
        log.warning("backend %s failed on route %s: %s", name, self.route, error,
                    extra={"backend": name, "route": self.route,
                           "provider_status": error.provider_status})
        breaker = self.d.breakers[name]
        if _counts_against(error):
            breaker.record_failure()
        else:
            breaker.record_success()
        if error.context_length:
            window = self.d.backends[name].capabilities.context_window
            self.window_floor = max(self.window_floor, window)
            return False
        if (not error.retryable or retry >= self.d.route(self.route).retries
                or breaker.state is not BreakerState.CLOSED):
            return False
        if error.timeout and self.after:
            return False  # a backend that ran out its share: the next one gets the time
        wait = self.d.retry.delay(retry, error, self.d.rng)
        if time.monotonic() + wait >= self.deadline:
            return False  # waiting would spend the whole deadline: try the next backend now
        await self.d.sleep(wait)
        return True

    def deadline_error(self, name: str | None = None) -> BackendError:
        error = deadline_exceeded(name or self.last_backend or self.route,
                                  f"route {self.route!r} after {self.attempts} attempt(s)")
        error.__cause__ = self.last_error
        return error

    def final_error(self) -> BackendError:
        if time.monotonic() >= self.deadline:
            return self.deadline_error()
        if self.last_error is None:
            return BackendError(f"route {self.route!r} has no backend that can take this call",
                                backend=self.route)
        return self.last_error

    def record(self, completion: Completion | None, error: BackendError | None, *,
               cancelled: bool = False) -> CallRecord:
        usage = completion.usage if completion else Usage()
        if cancelled and self.last_backend is not None:
            usage = Usage(self.d.prompt_tokens(self.last_backend, self.request), 0)
        backend = completion.backend if completion else self.last_backend
        config = self.d.backend_configs.get(backend or "")
        model = completion.model if completion else None
        record = CallRecord(
            route=self.route, backend=backend, model=model, attempts=self.attempts, usage=usage,
            cost_usd=cost_usd(config, model or config.model, usage) if config else 0.0,
            latency_ms=(time.monotonic() - self.started) * 1000.0,
            labels=dict(self.request.labels), error=str(error) if error else None,
            cancelled=cancelled)
        if self.d.on_call is not None:
            self.d.on_call(record)
        return record


class Dispatcher:
    """Routes calls over fallback chains of backends, within one deadline per call."""

    def __init__(self, backends: Mapping[str, Backend], routes: Mapping[str, RouteConfig], *,
                 retry: RetryPolicy = DEFAULT_RETRY, breaker: BreakerPolicy = DEFAULT_BREAKER,
                 backend_configs: Mapping[str, BackendConfig] | None = None,
                 on_call: Callable[[CallRecord], None] | None = None,
                 default_timeout_s: float = 60.0,
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        missing = [(route, name) for route, rc in routes.items() for name in rc.backends
                   if name not in backends]
        if missing:
            raise ContractError([
                ContractIssue("featurelm.yaml", f"routes.{route}.backends",
                              f"unknown backend {name!r}", "define it under backends:")
                for route, name in missing])
        self.backends = dict(backends)
        self.routes = dict(routes)
        self.retry = retry
        self.breakers = {name: CircuitBreaker(breaker) for name in self.backends}
        self.backend_configs = dict(backend_configs or {})
        self.on_call = on_call
        #: Deadline of a call that names none (limits.request_timeout_s in featurelm.yaml).
        self.default_timeout_s = default_timeout_s
        self.rng = rng or random.Random()
        self.sleep = sleep
        #: OpenTelemetry spans around each upstream call, set by the Engine when tracing is on.
        self.spans: Spans | None = None

    @classmethod
    def from_config(cls, config: EngineConfig, *,
                    backend_wrapper: Callable[[Backend], Backend] | None = None,
                    retry: RetryPolicy = DEFAULT_RETRY, breaker: BreakerPolicy = DEFAULT_BREAKER,
                    on_call: Callable[[CallRecord], None] | None = None) -> Dispatcher:
        """Build every configured backend (importing only the adapters in use)."""
        wrap = backend_wrapper or (lambda backend: backend)
        backends = {name: wrap(build_backend(name, bc)) for name, bc in config.backends.items()}
        return cls(backends, config.routes, retry=retry, breaker=breaker,
                   backend_configs=config.backends, on_call=on_call,
                   default_timeout_s=config.limits.request_timeout_s)

    # -- routes and budgets -------------------------------------------------------------------

    def route(self, name: str) -> RouteConfig:
        try:
            return self.routes[name]
        except KeyError:
            raise ContractError([ContractIssue(
                "featurelm.yaml", "routes", f"unknown route {name!r}",
                f"use one of: {', '.join(sorted(self.routes))}")]) from None

    def deadline_for(self, route: str) -> float:
        """The default deadline of a call started now on `route`."""
        self.route(route)
        return time.monotonic() + self.default_timeout_s

    def prompt_tokens(self, backend: str, request: CompletionRequest) -> int:
        """The prompt's tokens under the backend's own tokenizer where it has one."""
        return backend_prompt_tokens(self.backends[backend], request.messages)

    def _tokenizer_key(self, name: str) -> str:
        # Backends sharing a tiktoken encoding share one count; one counting with its own
        # vocabulary counts for itself.
        backend = self.backends[name]
        if isinstance(backend, CountingBackend):
            return f"backend:{name}"
        return backend.capabilities.tokenizer

    def backends_fitting(self, route: str, request: CompletionRequest) -> list[str]:
        """The route's backends whose context window holds the prompt plus max_tokens."""
        counts: dict[str, int] = {}
        fitting = []
        bound = prompt_token_bound(request.messages)
        for name in self.route(route).backends:
            caps = self.backends[name].capabilities
            if bound + request.max_tokens <= caps.context_window:
                fitting.append(name)  # fits whatever the exact count: skip counting
                continue
            key = self._tokenizer_key(name)
            if key not in counts:
                counts[key] = self.prompt_tokens(name, request)
            if counts[key] + request.max_tokens <= caps.context_window:
                fitting.append(name)
        return fitting

    def routes_fitting(self, request: CompletionRequest) -> list[str]:
        """Routes with at least one backend that can take this prompt."""
        return [route for route in self.routes if self.backends_fitting(route, request)]

    def ensure_fits(self, route: str, request: CompletionRequest) -> list[str]:
        """The fitting backends, or a TooLargeError before any backend is called."""
        fitting = self.backends_fitting(route, request)
        if not fitting:
            names = self.route(route).backends
            window = max(self.backends[n].capabilities.context_window for n in names)
            tokens = self.prompt_tokens(names[0], request)
            raise TooLargeError(
                f"input too long for route {route!r}: the prompt takes {tokens} tokens and "
                f"{request.max_tokens} more are reserved for the output, but the largest "
                f"context window on this route is {window} tokens")
        return fitting

    # -- calls --------------------------------------------------------------------------------

    async def complete(self, route: str, request: CompletionRequest, *,
                       deadline: float | None = None) -> Completion:
        """The first successful completion along the route's chain, within `deadline`
        (a time.monotonic() instant); raises the last BackendError if every backend failed."""
        return (await self.dispatch(route, request, deadline=deadline)).completion

    async def dispatch(self, route: str, request: CompletionRequest, *,
                       deadline: float | None = None,
                       skip: frozenset[str] = frozenset(),
                       on_text: TextSink | None = None) -> Dispatched:
        """Like `complete`, with the usage record of the call (made here, once per upstream
        call, and passed to `on_call`). Backends in `skip` are tried only if no other backend
        on the route fits (structured output moves past a backend whose replies keep failing
        the schema).

        With `on_text`, the reply's text goes to it as it is generated: a streaming backend
        streams, any other sends its whole reply once it has it. Failures before the first
        chunk retry and fall back as usual; after it they are raised. Either way the returned
        completion names the backend that produced the text."""
        deadline = self.deadline_for(route) if deadline is None else deadline
        names = _without(self.ensure_fits(route, request), skip)
        hedge_after_ms = self.route(route).hedge_after_ms
        if hedge_after_ms is None or on_text is not None or len(names) < 2:
            return await self._walk(_Run(self, route, request, deadline), names, on_text)
        return await self._hedged(route, request, deadline, names, hedge_after_ms / 1000)

    async def _hedged(self, route: str, request: CompletionRequest, deadline: float,
                      names: list[str], after_s: float) -> Dispatched:
        """The call along `names`; if it has no answer after `after_s`, the same call also
        along the backends after the one it waits on. The first answer wins and the other
        call is cancelled; a failure waits for the other call's outcome."""
        first = _Run(self, route, request, deadline)
        runs: dict[asyncio.Future[Dispatched], _Run] = {
            asyncio.ensure_future(self._walk(first, names, None)): first}
        try:
            done, _ = await asyncio.wait(runs, timeout=after_s)
            waiting_on = first.last_backend
            rest = names[names.index(waiting_on) + 1:] if waiting_on in names else []
            if not done and rest:
                second = _Run(self, route, request, deadline)
                runs[asyncio.ensure_future(self._walk(second, rest, None))] = second
            pending: set[asyncio.Future[Dispatched]] = set(runs)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        return task.result()
            # Both failed: the first call's error, as without a hedge.
            errors = [error for task in runs if (error := task.exception()) is not None]
            raise errors[0]
        finally:
            losers = {task: run for task, run in runs.items() if not task.done()}
            for task in losers:
                task.cancel()
            await asyncio.gather(*losers, return_exceptions=True)
            for run in losers.values():
                if run.attempts:
                    run.record(None, None, cancelled=True)

    async def _walk(self, run: _Run, names: list[str], on_text: TextSink | None) -> Dispatched:
        """Try `names` in order, retrying each as the route allows, until one answers."""
        try:
            for name, backend in run.candidates(names):
                retry = 0
                while True:
                    attempt = run.attempt_request(name)
                    try:
                        if self.spans is None:
                            completion = await self._attempt(run, name, backend, attempt,
                                                             on_text)
                        else:
                            completion = await self._spanned_attempt(
                                self.spans, run, name, backend, attempt, on_text, retry)
                    except BackendError as error:
                        if run.sent:
                            # The caller has shown this attempt's text: no retry, no fallback.
                            self.breakers[name].record_failure()
                            raise
                        if await run.should_retry(name, error, retry):
                            retry += 1
                            continue
                        break
                    except BaseException:
                        self.breakers[name].release()
                        raise
                    self.breakers[name].record_success()
                    record = run.record(completion, None)
                    if on_text is not None and not run.sent:
                        await on_text(completion.text)  # a backend that cannot stream
                    return Dispatched(completion, record)
            raise run.final_error()
        except BackendError as error:
            run.record(None, error)
            raise

    async def _spanned_attempt(self, spans: Spans, run: _Run, name: str, backend: Backend,
                               request: CompletionRequest, on_text: TextSink | None,
                               retry: int) -> Completion:
        with spans.attempt(name, backend.model, request, retry=retry) as span:
            completion = await self._attempt(run, name, backend, request, on_text)
            spans.attempt_succeeded(span, completion)
            return completion

    async def _attempt(self, run: _Run, name: str, backend: Backend,
                       request: CompletionRequest, on_text: TextSink | None) -> Completion:
        """One upstream call: streamed into `on_text` where the backend can, else complete."""
        run.sent = False
        if on_text is None or not _streams(backend):
            return await run.guard(name, backend.complete(request))
        chunks = cast(StreamingBackend, backend).stream(request).__aiter__()
        parts: list[str] = []
        usage: Usage | None = None

        async def relay(until_first_text: bool) -> None:
            nonlocal usage
            async for item in chunks:
                if isinstance(item, Usage):
                    usage = item  # the provider counted: its numbers, as for `complete`
                    continue
                parts.append(item)
                run.sent = True
                await on_text(item)
                if until_first_text:
                    return

        try:
            # The attempt's share of the time until the first text, then the whole deadline
            # for the rest (one timer for all the chunks, not one per chunk).
            await run.guard(name, relay(until_first_text=True))
            if run.sent:
                await run.guard(name, relay(until_first_text=False), whole_deadline=True)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        text = "".join(parts)
        if usage is None:
            tokenizer = backend.capabilities.tokenizer
            usage = Usage(count_prompt_tokens(request.messages, tokenizer),
                          count_text_tokens(text, tokenizer))
        return Completion(text=text, backend=name, model=backend.model, usage=usage)


#: Whether each backend class has `stream`: an isinstance check against a runtime Protocol
#: inspects the protocol's members each time (tens of microseconds per streamed call).
_STREAMING_CLASSES: dict[type, bool] = {}


def _streams(backend: Backend) -> bool:
    kind = type(backend)
    can = _STREAMING_CLASSES.get(kind)
    if can is None:
        can = _STREAMING_CLASSES[kind] = isinstance(backend, StreamingBackend)
    return can and backend.capabilities.streaming


def _without(names: list[str], skip: frozenset[str]) -> list[str]:
    """`names` less `skip`, unless that leaves none."""
    return [n for n in names if n not in skip] or names


__all__ = ["CallRecord", "Dispatched", "Dispatcher", "TextSink"]
