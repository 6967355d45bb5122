"""`Idempotency-Key`: a retried POST gets the first response back without a second backend call.

Keys are scoped per tenant and bound to the request body's hash (same key, different body:
422). Only successful responses are kept, so a retry after a failure runs again. A retry that
arrives while the first request runs waits for it on the same replica; on another replica it
gets 409 (the first one's result is there once it finishes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from featurelm.engine.errors import IdempotencyKeyError, InProgressError
from featurelm.serving.kv import KV

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
KEY_PATTERN = re.compile(rf"^[\x21-\x7e]{{1,{MAX_KEY_CHARS}}}$")
#: How long a "pending" marker lives if its replica dies mid-request.
PENDING_TTL_S = 600.0


@dataclass(frozen=True)
class Stored:
    status: int
    body: bytes
    #: True when this response is a replay of an earlier one.
    replayed: bool = False


Produce = Callable[[], Awaitable[Stored]]


def check_key(key: str) -> None:
    """Refuse a key that is not 1 to MAX_KEY_CHARS visible ASCII characters."""
    if not KEY_PATTERN.match(key):
        raise IdempotencyKeyError(f"the key must be 1 to {MAX_KEY_CHARS} visible ASCII "
                                  "characters")


class Idempotency:
    def __init__(self, kv: KV, ttl_s: float) -> None:
        self.kv = kv
        self.ttl_s = ttl_s
        self._inflight: dict[str, asyncio.Future[Stored]] = {}

    async def run(self, tenant: str | None, key: str, body: bytes, produce: Produce) -> Stored:
        check_key(key)
        # Hash the client's key: it is arbitrary text and must not shape our storage keys.
        slot = "idem:" + hashlib.sha256(f"{tenant or '-'}\0{key}".encode()).hexdigest()
        body_hash = hashlib.sha256(body).hexdigest()
        pending = json.dumps({"hash": body_hash, "state": "pending"}).encode()
        while True:
            if await self.kv.set(slot, pending, PENDING_TTL_S, only_new=True):
                break
            stored = await self._existing(slot, body_hash)
            if stored is not None:
                return stored
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._inflight[slot] = future
        try:
            result = await produce()
        except BaseException as exc:
            await self.kv.delete(slot)
            future.set_exception(exc)
            future.exception()  # retrieved here: waiters, if any, re-raise it themselves
            raise
        finally:
            self._inflight.pop(slot, None)
        if 200 <= result.status < 300:
            record = {"hash": body_hash, "state": "done", "status": result.status,
                      "body": result.body.decode()}
            await self.kv.set(slot, json.dumps(record).encode(), self.ttl_s)
        else:
            await self.kv.delete(slot)
        future.set_result(result)
        return result

    async def _existing(self, slot: str, body_hash: str) -> Stored | None:
        raw = await self.kv.get(slot)
        if raw is None:
            return None  # expired or released meanwhile: try to claim it again
        record = json.loads(raw)
        if record["hash"] != body_hash:
            raise IdempotencyKeyError(
                "this Idempotency-Key was used with a different request body")
        if record["state"] == "done":
            return Stored(int(record["status"]), record["body"].encode(), replayed=True)
        future = self._inflight.get(slot)
        if future is None:
            raise InProgressError(
                "a request with this Idempotency-Key is still running; retry later",
                retry_after=1)
        first = await asyncio.shield(future)
        return Stored(first.status, first.body, replayed=True)
