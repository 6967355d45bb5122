"""Hedged requests (`routes.<name>.hedge_after_ms`): a call still unanswered after that long is
also sent to the next backend; the first answer wins, the other is cancelled and its prompt
recorded, and streamed calls are never hedged."""

from __future__ import annotations

import asyncio
import time

import pytest

from featurelm.engine.backends.scripted import ScriptedBackend
from featurelm.engine.config import EngineConfig, RouteConfig
from featurelm.engine.dispatch import CallRecord, Dispatcher
from featurelm.engine.errors import BackendError
from featurelm.engine.types import CompletionRequest, Message

REQUEST = CompletionRequest(messages=(Message("user", "hi"),))
DOWN = BackendError("down", backend="b", provider_status=400)


def dispatcher(a: ScriptedBackend, b: ScriptedBackend, hedge_after_ms: int | None = 50,
               ) -> tuple[Dispatcher, list[CallRecord]]:
    records: list[CallRecord] = []
    route = RouteConfig(backends=["a", "b"], retries=0, hedge_after_ms=hedge_after_ms)
    return Dispatcher({"a": a, "b": b}, {"r": route}, on_call=records.append), records


async def test_a_slow_first_backend_is_hedged_and_the_faster_answer_wins() -> None:
    a, b = ScriptedBackend(["from a"], name="a", delay=2), ScriptedBackend(["from b"], name="b")
    hedged, records = dispatcher(a, b)
    started = time.monotonic()
    done = await hedged.dispatch("r", REQUEST, deadline=time.monotonic() + 10)
    assert done.completion.text == "from b"
    assert time.monotonic() - started < 1
    assert (a.calls, b.calls) == (1, 1)
    # Both recorded: the winner with its usage, the cancelled one with the prompt it was sent.
    [loser] = [r for r in records if r.cancelled]
    [winner] = [r for r in records if not r.cancelled]
    assert (winner.backend, winner.error) == ("b", None)
    assert loser.backend == "a" and loser.usage.prompt_tokens > 0
    assert loser.usage.completion_tokens == 0


async def test_an_answer_before_the_hedge_delay_asks_no_second_backend() -> None:
    a, b = ScriptedBackend(["from a"], name="a"), ScriptedBackend(["from b"], name="b")
    hedged, records = dispatcher(a, b, hedge_after_ms=500)
    done = await hedged.dispatch("r", REQUEST, deadline=time.monotonic() + 10)
    assert done.completion.text == "from a"
    assert (a.calls, b.calls, len(records)) == (1, 0, 1)


async def test_the_first_backend_still_wins_when_it_answers_first() -> None:
    a = ScriptedBackend(["from a"], name="a", delay=0.2)
    b = ScriptedBackend(["from b"], name="b", delay=2)
    hedged, records = dispatcher(a, b)
    done = await hedged.dispatch("r", REQUEST, deadline=time.monotonic() + 10)
    assert done.completion.text == "from a"
    assert [r.backend for r in records if r.cancelled] == ["b"]


async def test_a_failing_half_waits_for_the_other() -> None:
    async def fail_late(request: CompletionRequest) -> str:
        await asyncio.sleep(0.2)
        raise DOWN

    a = ScriptedBackend(fail_late, name="a")
    b = ScriptedBackend(["from b"], name="b", delay=0.4)
    hedged, _ = dispatcher(a, b)
    done = await hedged.dispatch("r", REQUEST, deadline=time.monotonic() + 10)
    assert done.completion.text == "from b"


async def test_when_both_halves_fail_the_call_fails_with_a_backend_error() -> None:
    a = ScriptedBackend([DOWN], name="a", delay=0.2)
    b = ScriptedBackend([DOWN], name="b", delay=0.1)
    hedged, _ = dispatcher(a, b)
    with pytest.raises(BackendError):
        await hedged.dispatch("r", REQUEST, deadline=time.monotonic() + 10)


async def test_without_the_setting_a_slow_backend_is_waited_for() -> None:
    a, b = ScriptedBackend(["from a"], name="a", delay=0.3), ScriptedBackend(["b"], name="b")
    plain, _ = dispatcher(a, b, hedge_after_ms=None)
    done = await plain.dispatch("r", REQUEST, deadline=time.monotonic() + 10)
    assert (done.completion.text, b.calls) == ("from a", 0)


async def test_streamed_calls_are_never_hedged() -> None:
    a = ScriptedBackend(["from a"], name="a", delay=0.3)
    b = ScriptedBackend(["from b"], name="b")
    hedged, _ = dispatcher(a, b)
    chunks: list[str] = []

    async def sink(text: str) -> None:
        chunks.append(text)

    done = await hedged.dispatch("r", REQUEST, deadline=time.monotonic() + 10, on_text=sink)
    assert (done.completion.text, "".join(chunks), b.calls) == ("from a", "from a", 0)


async def test_a_caller_that_gives_up_cancels_both_halves() -> None:
    a = ScriptedBackend(["from a"], name="a", delay=5)
    b = ScriptedBackend(["from b"], name="b", delay=5)
    hedged, records = dispatcher(a, b)
    call = asyncio.ensure_future(hedged.dispatch("r", REQUEST,
                                                 deadline=time.monotonic() + 10))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert (a.calls, b.calls) == (1, 1)
    assert sorted(r.backend or "" for r in records if r.cancelled) == ["a", "b"]
    assert all(hedged.breakers[n].allow() for n in ("a", "b"))


def test_the_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="hedge_after_ms"):
        EngineConfig.model_validate({"routes": {"r": {"backends": ["x"], "hedge_after_ms": 0}},
                                     "backends": {"x": {"kind": "scripted"}}})
