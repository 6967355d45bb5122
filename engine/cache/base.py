"""The cache store interface, and how entries and coalesced outcomes are (de)serialized."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from featurelm.engine.errors import (
    Attempt,
    BackendError,
    FeaturelmError,
    OutputError,
    backend_error,
)


@dataclass(frozen=True)
class CacheEntry:
    """A schema-valid output and the backend that actually produced it."""

    output: dict[str, Any]
    backend: str
    model: str

    def encode(self) -> str:
        return json.dumps({"output": self.output, "backend": self.backend, "model": self.model},
                          ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> CacheEntry | None:
        """The entry, or None for anything malformed (read as a miss, never as an error)."""
        try:
            data = json.loads(text)
            output, backend, model = data["output"], data["backend"], data["model"]
        except (ValueError, TypeError, KeyError):
            return None
        if not (isinstance(output, dict) and isinstance(backend, str) and isinstance(model, str)):
            return None
        return cls(output, backend, model)


@dataclass(frozen=True)
class Lease:
    """This replica leads a coalesced call; others wait for the outcome it publishes."""

    token: str


@dataclass(frozen=True)
class Done:
    """Another replica led the call; `payload` is its published outcome."""

    payload: str


def encode_outcome(outcome: CacheEntry | FeaturelmError) -> str | None:
    """An outcome for waiters on other replicas; None for errors they cannot rebuild (they
    then make the call themselves)."""
    if isinstance(outcome, CacheEntry):
        return json.dumps({"ok": json.loads(outcome.encode())})
    if isinstance(outcome, BackendError):
        return json.dumps({"backend_error": {
            "message": str(outcome), "backend": outcome.backend,
            "provider_status": outcome.provider_status, "retryable": outcome.retryable,
            "retry_after": outcome.retry_after, "context_length": outcome.context_length,
            "timeout": outcome.timeout}})
    if isinstance(outcome, OutputError):
        return json.dumps({"output_error": {
            "message": str(outcome),
            "attempts": [{"backend": a.backend, "raw": a.raw, "errors": a.errors,
                          "repaired": a.repaired} for a in outcome.attempts]}})
    return None


def decode_outcome(payload: str) -> CacheEntry | FeaturelmError | None:
    """The published outcome, or None if it cannot be read (the waiter goes alone)."""
    try:
        data = json.loads(payload)
        if "ok" in data:
            return CacheEntry.decode(json.dumps(data["ok"]))
        if "backend_error" in data:
            fields = dict(data["backend_error"])
            return backend_error(fields.pop("message"), **fields)
        if "output_error" in data:
            fields = data["output_error"]
            return OutputError(fields["message"], [Attempt(**a) for a in fields["attempts"]])
    except (ValueError, TypeError, KeyError):
        return None
    return None


class CacheStore(ABC):
    """Where entries live. Implementations never raise for their own failures: a cache that
    is down reads as a miss and drops writes, so no call fails because the cache did."""

    #: Whether identical calls on other engine replicas can be coalesced through this store.
    distributed: bool = False
    #: Operations that failed (Redis down or slow) since start; exported as a metric.
    failures: int = 0
    #: Calls now waiting for an identical call that another replica leads.
    waiting: int = 0

    @abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[str | None]: ...

    @abstractmethod
    async def set(self, key: str, value: str, ttl_s: int) -> None:
        """Store `value`; `ttl_s` 0 means no expiry (eviction still applies)."""

    async def claim(self, flight: str, deadline: float) -> Lease | Done | None:
        """Lead `flight` across replicas, or wait (until `deadline`, monotonic) for the
        replica that leads it. None: no coordination available, make the call alone."""
        return None

    async def finish(self, flight: str, lease: Lease, outcome: str | None) -> None:
        """Publish a led flight's outcome to waiting replicas and release the lead."""
        return None

    async def aclose(self) -> None:
        return None
