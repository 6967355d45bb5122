"""In-process request coalescing (singleflight): identical concurrent calls share one run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """The first caller of a key starts the work; callers arriving while it runs await the
    same run and get the same result or the same exception."""

    def __init__(self) -> None:
        self._runs: dict[str, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._runs)

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """(result, True for the caller whose call started the work)."""
        task = self._runs.get(key)
        leader = task is None
        if task is None:
            # A task of its own, shielded from each caller: a leader whose client goes away
            # must not cancel the call that every waiter depends on.
            task = asyncio.ensure_future(work())
            self._runs[key] = task
            task.add_done_callback(partial(self._finished, key))
        return await asyncio.shield(task), leader

    def _finished(self, key: str, task: asyncio.Task[T]) -> None:
        if self._runs.get(key) is task:
            del self._runs[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a run every caller left is not reported

    async def aclose(self) -> None:
        """Cancel runs still in progress (engine shutdown)."""
        runs = list(self._runs.values())
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
