"""Resolved API keys, kept briefly so a slow or unreachable tenant store does not stall calls
whose key it already confirmed.

A key found in the store is trusted for `FRESH_S` without asking again; while the store fails,
a key confirmed within `STALE_S` keeps working (keys cannot be revoked, only created, so a
stale answer is never a wrong one). Unknown keys are remembered for `NEGATIVE_S`, so a flood
of wrong keys costs the store one lookup each per interval. Entries are keyed by the key's
digest, never the key itself.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

FRESH_S = 30.0
STALE_S = 3600.0
NEGATIVE_S = 2.0
MAX_ENTRIES = 50_000


@dataclass(frozen=True)
class KnownKey:
    tenant: str | None
    admin: bool
    #: time.monotonic() when the store last confirmed it (or said it is unknown).
    checked_at: float
    known: bool = True


class KeyCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[str, KnownKey] = OrderedDict()
        self._max = max_entries

    @staticmethod
    def _slot(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

    def fresh(self, token: str) -> KnownKey | None:
        """The cached answer if recent enough to skip the store."""
        entry = self._entries.get(self._slot(token))
        if entry is None:
            return None
        age = time.monotonic() - entry.checked_at
        return entry if age < (FRESH_S if entry.known else NEGATIVE_S) else None

    def stale(self, token: str) -> KnownKey | None:
        """A known key confirmed within STALE_S: the answer while the store is failing."""
        entry = self._entries.get(self._slot(token))
        if entry is None or not entry.known or time.monotonic() - entry.checked_at >= STALE_S:
            return None
        return entry

    def remember(self, token: str, tenant: str | None, admin: bool, *, known: bool) -> None:
        slot = self._slot(token)
        self._entries[slot] = KnownKey(tenant, admin, time.monotonic(), known)
        self._entries.move_to_end(slot)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
