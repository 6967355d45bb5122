"""The one place where provider and transport exceptions become `BackendError`s.

Adapters run every provider call inside `mapped_errors(backend)`; each exception class they
can meet (aiohttp, httpx, the OpenAI SDK, litellm, the OS) has a rule here saying whether it
is worth retrying, whether it was a timeout, and what the provider's status and Retry-After
were.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from featurelm.engine.errors import BackendError, backend_error

#: Statuses worth another try: rate limits, timeouts, conflicts and every server error.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
#: Statuses under which a body that talks about the context window means "prompt too long".
CONTEXT_STATUSES = frozenset({400, 413, 422})
_CONTEXT_PATTERN = re.compile(
    r"context[ _-]?(length|window)|maximum context|too many tokens|prompt is too long"
    r"|input is too long|exceeds? (the )?(model'?s? )?(maximum|max|context)",
    re.IGNORECASE,
)
#: Credentials a provider might echo back (OpenAI-style keys, bearer tokens).
_CREDENTIAL_PATTERN = re.compile(r"(Bearer\s+)\S+|\bsk-[A-Za-z0-9_\-*]{6,}", re.IGNORECASE)
_SNIPPET_CHARS = 300
log = logging.getLogger("featurelm.backends")


class MalformedResponse(ValueError):
    """A provider answered 2xx with a body that is not the chat-completion shape."""


class ProviderStatusError(Exception):
    """A provider answered with an HTTP error status (raised by the HTTP adapter)."""

    def __init__(self, status: int, body: str, headers: Mapping[str, str]):
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.headers = headers


@dataclass(frozen=True)
class Failure:
    """What a rule decided about one exception, before it becomes a BackendError."""

    what: str
    retryable: bool
    timeout: bool = False
    status: int | None = None
    retry_after: float | None = None
    context_length: bool = False
    detail: str = ""


Rule = Callable[[BaseException], Failure]


def classify_status(status: int, body: str = "", headers: Mapping[str, str] | None = None,
                    *, what: str = "") -> Failure:
    """Decide retryability and context-length from an HTTP status, body and headers."""
    context = status in CONTEXT_STATUSES and bool(_CONTEXT_PATTERN.search(body))
    return Failure(
        what=what or f"HTTP {status}",
        retryable=status in RETRYABLE_STATUSES or status >= 500,
        status=status,
        retry_after=parse_retry_after(headers or {}),
        context_length=context,
        detail=body,
    )


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP-date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if (ms := lowered.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _fixed(what: str, *, retryable: bool, timeout: bool = False) -> Rule:
    return lambda exc: Failure(what=what, retryable=retryable, timeout=timeout, detail=str(exc))


def _from_provider_status(exc: BaseException) -> Failure:
    assert isinstance(exc, ProviderStatusError)
    return classify_status(exc.status, exc.body, exc.headers)


def _response_headers(exc: BaseException) -> Mapping[str, str]:
    headers: dict[str, str] = {}
    # SDK exceptions carry an httpx response (and litellm its own copy of the headers).
    for source in (getattr(getattr(exc, "response", None), "headers", None),
                   getattr(exc, "litellm_response_headers", None)):
        if source is not None and callable(getattr(source, "items", None)):
            headers.update({str(k): str(v) for k, v in source.items()})
    return headers


def _from_status_attribute(exc: BaseException) -> Failure:
    """SDK exceptions (OpenAI, litellm) that carry the provider's status code."""
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", "") or exc)
    if not isinstance(status, int):
        return Failure(what=type(exc).__name__, retryable=False, detail=message)
    return classify_status(status, message, _response_headers(exc), what=type(exc).__name__)


def _context_window(exc: BaseException) -> Failure:
    failure = _from_status_attribute(exc)
    return Failure(what="context window exceeded", retryable=False, status=failure.status,
                   context_length=True, detail=failure.detail)


_STATIC_RULES: dict[type[BaseException], Rule] = {
    TimeoutError: _fixed("timed out", retryable=True, timeout=True),
    # A certificate the server cannot prove, or a TLS version it refuses: no retry fixes it.
    ssl.SSLError: _fixed("TLS failed", retryable=False),
    ConnectionError: _fixed("connection failed", retryable=True),
    json.JSONDecodeError: _fixed("malformed JSON body", retryable=True),
    UnicodeDecodeError: _fixed("undecodable response body", retryable=True),
    MalformedResponse: _fixed("malformed response", retryable=True),
    ProviderStatusError: _from_provider_status,
}


def _httpx_rules(module: Any) -> dict[type[BaseException], Rule]:
    """httpx errors, raised through the OpenAI SDK and litellm (hosted backends)."""

    def from_status(exc: BaseException) -> Failure:
        response = exc.response  # type: ignore[attr-defined]
        try:
            body = response.text
        except module.ResponseNotRead:
            body = ""
        return classify_status(response.status_code, body, response.headers)

    return {
        module.HTTPStatusError: from_status,
        module.TimeoutException: _fixed("timed out", retryable=True, timeout=True),
        module.ConnectError: _fixed("connection refused", retryable=True),
        module.NetworkError: _fixed("connection reset", retryable=True),
        module.RemoteProtocolError: _fixed("connection dropped mid-response", retryable=True),
        module.LocalProtocolError: _fixed("invalid request", retryable=False),
        module.ProxyError: _fixed("proxy failed", retryable=True),
        module.UnsupportedProtocol: _fixed("unsupported URL scheme", retryable=False),
        module.TransportError: _fixed("transport failed", retryable=True),
        module.DecodingError: _fixed("undecodable response body", retryable=True),
        module.TooManyRedirects: _fixed("too many redirects", retryable=False),
        module.RequestError: _fixed("request failed", retryable=True),
        module.HTTPError: _fixed("HTTP error", retryable=False),
        module.InvalidURL: _fixed("invalid URL", retryable=False),
        module.CookieConflict: _fixed("cookie conflict", retryable=False),
        module.StreamError: _fixed("response stream misused", retryable=False),
    }


def _aiohttp_rules(module: Any) -> dict[type[BaseException], Rule]:
    def from_response_error(exc: BaseException) -> Failure:
        return classify_status(exc.status, str(exc.message),  # type: ignore[attr-defined]
                               dict(exc.headers or {}))  # type: ignore[attr-defined]

    timed_out = _fixed("timed out", retryable=True, timeout=True)
    dropped = _fixed("connection dropped mid-response", retryable=True)
    misuse = _fixed("invalid request", retryable=False)
    return {
        module.ClientError: _fixed("request failed", retryable=True),
        module.ClientResponseError: from_response_error,
        module.ContentTypeError: _fixed("malformed response", retryable=True),
        module.ClientConnectionError: _fixed("connection failed", retryable=True),
        module.ClientOSError: _fixed("connection reset", retryable=True),
        module.ClientConnectorError: _fixed("connection refused", retryable=True),
        module.ClientSSLError: _fixed("TLS failed", retryable=False),
        module.ServerFingerprintMismatch: _fixed("TLS fingerprint mismatch", retryable=False),
        module.ServerDisconnectedError: dropped,
        module.ClientPayloadError: dropped,
        module.ServerTimeoutError: timed_out,
        module.ConnectionTimeoutError: timed_out,
        module.SocketTimeoutError: timed_out,
        module.InvalidURL: _fixed("invalid URL", retryable=False),
        module.RedirectClientError: _fixed("redirect refused", retryable=False),
        module.TooManyRedirects: _fixed("too many redirects", retryable=False),
        module.WSMessageTypeError: misuse,
    }


def _openai_rules(module: Any) -> dict[type[BaseException], Rule]:
    return {
        module.OpenAIError: _from_status_attribute,
        module.APIStatusError: _from_status_attribute,
        module.APIConnectionError: _fixed("connection failed", retryable=True),
        module.APITimeoutError: _fixed("timed out", retryable=True, timeout=True),
        module.APIResponseValidationError: _fixed("malformed response", retryable=True),
        module.LengthFinishReasonError: _fixed("output hit the length limit", retryable=False),
        module.ContentFilterFinishReasonError: _fixed("output filtered", retryable=False),
    }


def _litellm_rules(module: Any) -> dict[type[BaseException], Rule]:
    refused = _fixed("refused by the gateway", retryable=False)
    return {
        module.OpenAIError: _from_status_attribute,
        module.APIError: _from_status_attribute,
        module.APIConnectionError: _fixed("connection failed", retryable=True),
        module.Timeout: _fixed("timed out", retryable=True, timeout=True),
        module.ContextWindowExceededError: _context_window,
        module.APIResponseValidationError: _fixed("malformed response", retryable=True),
        module.BudgetExceededError: refused,
        module.GuardrailRaisedException: refused,
        module.BlockedPiiEntityError: refused,
        module.SensitiveDataRouteException: refused,
        module.ModifyResponseException: refused,
        module.ModelNotMappedError: _fixed("model not known to the gateway", retryable=False),
    }


#: Optional SDKs whose exceptions can only exist once something else imported them.
_OPTIONAL_RULES: dict[str, Callable[[Any], dict[type[BaseException], Rule]]] = {
    "aiohttp": _aiohttp_rules,
    "httpx": _httpx_rules,
    "openai": _openai_rules,
    "litellm.exceptions": _litellm_rules,
}
_tables: dict[frozenset[str], dict[type[BaseException], Rule]] = {}


def _rules() -> dict[type[BaseException], Rule]:
    # Never import an SDK here: its exceptions cannot reach us unless it is already loaded.
    loaded = frozenset(name for name in _OPTIONAL_RULES if name in sys.modules)
    table = _tables.get(loaded)
    if table is None:
        table = {}
        for name in sorted(loaded):
            table.update(_OPTIONAL_RULES[name](sys.modules[name]))
        table.update(_STATIC_RULES)
        _tables[loaded] = table
    return table


def rule_for(exc_type: type[BaseException]) -> Rule | None:
    """The most specific rule along `exc_type`'s MRO, or None if nothing here handles it."""
    table = _rules()
    for klass in exc_type.__mro__:
        if klass in table:
            return table[klass]
    return None


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials from text that may end up in logs or error bodies."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _CREDENTIAL_PATTERN.sub(lambda m: f"{m.group(1) or ''}***", text)


def to_backend_error(failure: Failure, backend: str, secrets: Iterable[str] = (), *,
                     detail_is_public: bool = False) -> BackendError:
    """The error a caller may see: what failed and the provider's status. The provider's
    body and the transport's own words (host names, ports, proxy replies) go to the server
    log, scrubbed, under the request id; `detail_is_public` is for details this module wrote."""
    detail = scrub(" ".join(failure.detail.split())[:_SNIPPET_CHARS], secrets)
    message = f"backend {backend!r}: {failure.what}"
    if failure.status is not None and str(failure.status) not in failure.what:
        message += f" (HTTP {failure.status})"
    if detail and detail_is_public:
        message += f": {detail}"
    elif detail:
        log.warning("%s: %s", message, detail)
    return backend_error(message, timeout=failure.timeout, backend=backend,
                         provider_status=failure.status, retryable=failure.retryable,
                         retry_after=failure.retry_after, context_length=failure.context_length)


def map_exception(exc: BaseException, backend: str,
                  secrets: Iterable[str] = ()) -> BackendError | None:
    """The BackendError for `exc`, or None when it is not a provider failure (a bug)."""
    if isinstance(exc, BackendError):
        return exc
    rule = rule_for(type(exc))
    if rule is None:
        return None
    return to_backend_error(rule(exc), backend, secrets)


@contextmanager
def mapped_errors(backend: str, secrets: Iterable[str] = ()) -> Iterator[None]:
    """Re-raise every provider/transport exception in the block as a BackendError."""
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        mapped = map_exception(exc, backend, secrets)
        if mapped is None:
            raise
        raise mapped from exc


def deadline_exceeded(backend: str, detail: str = "") -> BackendError:
    """The error the dispatcher raises when a call's deadline runs out."""
    return to_backend_error(Failure(what="deadline exceeded", retryable=False, timeout=True,
                                    detail=detail), backend, detail_is_public=True)


def circuit_open(backend: str) -> BackendError:
    """The error for a chain whose every backend was skipped by its open circuit breaker."""
    return to_backend_error(Failure(what="circuit breaker open", retryable=True), backend)
