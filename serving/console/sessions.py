"""Console sessions: a random id in a Secure, HttpOnly, SameSite=Strict cookie, and the API key
it signed in with kept on the server, never in the browser.

Every request resolves the key again through the same path as the HTTP API (serving/auth.py),
so a key revoked in the store stops working in the console within the key cache's freshness.
Sessions live in this process's memory: bounded, idle-expired, lost on restart (sign in
again). Several replicas need sticky sessions at the load balancer (docs/console.md).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

COOKIE = "featurelm_console"
#: A session unused this long is forgotten (seconds).
IDLE_S = 8 * 3600
#: Most sessions kept; the least recently used goes first.
MAX_SESSIONS = 10_000


@dataclass
class Session:
    id: str
    #: Sent back with every change (form field `csrf` or header `X-CSRF-Token`).
    csrf: str
    #: The API key signed in with; None before sign-in (or with `auth: off`, none given).
    api_key: str | None = None
    #: An admin's chosen tenant to act as.
    tenant: str | None = None
    seen: float = field(default_factory=time.monotonic)

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class Sessions:
    """Sessions by id, least recently used first."""

    def __init__(self, *, idle_s: float = IDLE_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        found = self._by_id.get(session_id)
        now = time.monotonic()
        if found is None or now - found.seen > self.idle_s:
            self._by_id.pop(session_id, None)
            return None
        found.seen = now
        self._by_id.move_to_end(session_id)
        return found

    def new(self, *, api_key: str | None = None, tenant: str | None = None) -> Session:
        """A fresh session (a new id at sign-in too, so an id seen before sign-in is useless
        after it)."""
        while len(self._by_id) >= self.max_sessions:
            self._by_id.popitem(last=False)
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), api_key, tenant)
        self._by_id[session.id] = session
        return session

    def drop(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._by_id)
