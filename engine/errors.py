"""The engine's one error tree, and the one table from error kind to HTTP status.

Every error raised on purpose is a `FeaturelmError`. The class says what happened; the HTTP
status follows from the class through `HTTP_STATUS` (serving/problems.py reads it, nothing
picks a status at the raise site); `kind` is the problem+json `type` suffix.

    FeaturelmError                      500  error          (base; never raised itself)
    ├── ContractError                   422  contract       a feature or override file is wrong
    ├── InputError                      422  input          the caller's input is refused
    │   ├── TooLargeError               413  input          input bytes, prompt over every context
    │   │   │                                               window of the route, batch items
    │   │   └── BodyTooLargeError       413  too-large      HTTP body over http.max_body_bytes
    │   ├── ConflictError               409  input          the change conflicts with stored state
    │   └── IdempotencyKeyError         422  idempotency    bad Idempotency-Key, or reused with
    │                                                       another body
    ├── NotFoundError                   404  not-found      no such feature, tenant or version
    ├── UnauthorizedError               401  unauthorized   missing or unknown API key
    ├── ForbiddenError                  403  forbidden      the key may not use this endpoint
    ├── InProgressError                 409  idempotency-in-progress   (retry_after)
    ├── RateLimitedError                429  rate-limited   (retry_after)
    │   └── QuotaExceededError          429  quota-exceeded (retry_after)
    ├── UnavailableError                503  store-unavailable  a dependency is down (retry_after)
    │   └── StoreUnavailable            503  store          the tenant store failed
    ├── BackendError                    502  backend        a provider failed (backend, provider
    │   │                                                   status, retry_after)
    │   └── BackendTimeout              504  backend        no answer within the deadline
    └── OutputError                     502  output         no schema-valid output within the
                                                            attempt budget (attempts)

`retry_after` (seconds), where set, becomes a Retry-After header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class FeaturelmError(Exception):
    """Base of every error the engine raises on purpose."""

    #: Short machine-readable kind: the problem+json `type` suffix and a metrics label.
    kind: str = "error"
    #: problem+json `title`; empty means the class name.
    title: str = ""
    #: Seconds after which a retry may succeed (a Retry-After header over HTTP), if known.
    retry_after: float | None = None

    @property
    def status(self) -> int:
        """The HTTP status of this kind of error, from `HTTP_STATUS`."""
        return http_status(type(self))

    def public_detail(self) -> dict[str, Any]:
        """Fields safe to show a caller (never secrets, never stack traces)."""
        return {}


@dataclass
class ContractIssue:
    """One problem in a feature or override file: where it is, what is wrong, how to fix it."""

    file: str
    path: str
    problem: str
    fix: str = ""

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        text = f"{where}: {self.problem}"
        return f"{text} (fix: {self.fix})" if self.fix else text


class ContractError(FeaturelmError):
    """A feature or override file is wrong. Carries every issue found, not just the first."""

    kind = "contract"

    def __init__(self, issues: list[ContractIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))

    def public_detail(self) -> dict[str, Any]:
        return {
            "errors": [
                {"file": i.file, "path": i.path, "problem": i.problem, "fix": i.fix}
                for i in self.issues
            ]
        }


@dataclass
class SchemaViolation:
    """One JSON Schema failure, located by a JSON path into the instance."""

    path: str
    message: str


class InputError(FeaturelmError):
    """The caller sent input the feature does not accept."""

    kind = "input"

    def __init__(self, message: str, violations: list[SchemaViolation] | None = None):
        self.violations = violations or []
        super().__init__(message)

    def public_detail(self) -> dict[str, Any]:
        return {"errors": [{"path": v.path, "message": v.message} for v in self.violations]}


class TooLargeError(InputError):
    """The input is over a size budget: its bytes, the route's context windows, batch items."""


class BodyTooLargeError(TooLargeError):
    """The HTTP request body is over `http.max_body_bytes` (refused before it is parsed)."""

    kind = "too-large"
    title = "Request too large"


class ConflictError(InputError):
    """The requested change conflicts with stored state (the tenant exists, a racing write).
    Its `type` stays `input`: it is the caller's request that cannot be applied."""


class IdempotencyKeyError(InputError):
    """An Idempotency-Key that is malformed, or reused with a different request body."""

    kind = "idempotency"
    title = "Invalid Idempotency-Key"


class NotFoundError(FeaturelmError):
    """The named feature (or tenant object) does not exist for this caller."""

    kind = "not-found"


class UnauthorizedError(FeaturelmError):
    """No API key, or one the store does not know."""

    kind = "unauthorized"
    title = "Unauthorized"


class ForbiddenError(FeaturelmError):
    """A valid key that may not use this endpoint."""

    kind = "forbidden"
    title = "Forbidden"


class _Retryable(FeaturelmError):
    """An error that says when to come back."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message)


class InProgressError(_Retryable):
    """A request with the same Idempotency-Key is still running on another replica."""

    kind = "idempotency-in-progress"
    title = "Request in progress"


class RateLimitedError(_Retryable):
    """The tenant is over its rate limit for this window."""

    kind = "rate-limited"
    title = "Rate limit exceeded"


class QuotaExceededError(RateLimitedError):
    """The tenant used its token quota for this window."""

    kind = "quota-exceeded"
    title = "Token quota exceeded"


class UnavailableError(_Retryable):
    """A dependency the call needs (the tenant store) cannot be reached."""

    kind = "store-unavailable"
    title = "Service unavailable"


class StoreUnavailable(UnavailableError):
    """The store could not be reached or failed; the message never holds credentials."""

    kind = "store"
    title = ""


class BackendError(FeaturelmError):
    """A provider failed. `retryable` drives the dispatcher; `provider_status` is the
    provider's own HTTP status, if any. Built from provider exceptions in one place
    (engine/backends/provider_errors.py)."""

    kind = "backend"

    def __init__(self, message: str, *, backend: str, provider_status: int | None = None,
                 retryable: bool = False, retry_after: float | None = None,
                 context_length: bool = False):
        self.backend = backend
        self.provider_status = provider_status
        self.retryable = retryable
        self.retry_after = retry_after
        self.context_length = context_length
        super().__init__(message)

    @property
    def timeout(self) -> bool:
        """Whether the backend ran out of time (rather than answering with an error)."""
        return isinstance(self, BackendTimeout)

    def public_detail(self) -> dict[str, Any]:
        return {"backend": self.backend, "provider_status": self.provider_status}


class BackendTimeout(BackendError):
    """The backend did not answer within the call's deadline (or its own timeout)."""

    title = "BackendError"


def backend_error(message: str, *, timeout: bool = False, backend: str,
                  provider_status: int | None = None, retryable: bool = False,
                  retry_after: float | None = None,
                  context_length: bool = False) -> BackendError:
    """A BackendError, or a BackendTimeout when `timeout`: for code that learns which from
    data (a provider-exception rule, an outcome published by another replica)."""
    cls = BackendTimeout if timeout else BackendError
    return cls(message, backend=backend, provider_status=provider_status, retryable=retryable,
               retry_after=retry_after, context_length=context_length)


@dataclass
class Attempt:
    """One try at producing schema-valid output, kept for diagnosis."""

    backend: str
    raw: str
    errors: list[str] = field(default_factory=list)
    repaired: bool = False


class OutputError(FeaturelmError):
    """The model could not produce schema-valid output within the attempt budget."""

    kind = "output"

    def __init__(self, message: str, attempts: list[Attempt]):
        self.attempts = attempts
        super().__init__(message)

    def public_detail(self) -> dict[str, Any]:
        return {
            "attempts": [
                {"backend": a.backend, "errors": a.errors[:5], "repaired": a.repaired}
                for a in self.attempts
            ]
        }


#: The one table from error kind to HTTP status. A class not listed takes its nearest
#: listed base's status (an adapter's own BackendError subclass answers 502).
HTTP_STATUS: dict[type[FeaturelmError], int] = {
    FeaturelmError: 500,
    ContractError: 422,
    InputError: 422,
    TooLargeError: 413,
    ConflictError: 409,
    NotFoundError: 404,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    InProgressError: 409,
    RateLimitedError: 429,
    UnavailableError: 503,
    BackendError: 502,
    BackendTimeout: 504,
    OutputError: 502,
}


def http_status(cls: type[FeaturelmError]) -> int:
    """The status of `cls`: its own row in `HTTP_STATUS`, else its nearest base's."""
    for base in cls.__mro__:
        status = HTTP_STATUS.get(base)
        if status is not None:
            return status
    return 500
