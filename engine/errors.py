"""The engine's error families, one per audience (operator, caller, provider, model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class FeaturelmError(Exception):
    """Base of every error the engine raises on purpose."""

    #: HTTP status the serving layer maps this error to.
    status: int = 500
    #: Short machine-readable kind, used as the problem+json `type` suffix and in metrics.
    kind: str = "error"

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

    status = 422
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

    status = 422
    kind = "input"

    def __init__(self, message: str, violations: list[SchemaViolation] | None = None,
                 status: int = 422):
        self.violations = violations or []
        self.status = status
        super().__init__(message)

    def public_detail(self) -> dict[str, Any]:
        return {"errors": [{"path": v.path, "message": v.message} for v in self.violations]}


class NotFoundError(FeaturelmError):
    """The named feature (or tenant object) does not exist for this caller."""

    status = 404
    kind = "not-found"


class BackendError(FeaturelmError):
    """A provider failed. `retryable` drives the dispatcher; `status` is the provider's, if any."""

    kind = "backend"

    def __init__(self, message: str, *, backend: str, provider_status: int | None = None,
                 retryable: bool = False, retry_after: float | None = None,
                 context_length: bool = False, timeout: bool = False):
        self.backend = backend
        self.provider_status = provider_status
        self.retryable = retryable
        self.retry_after = retry_after
        self.context_length = context_length
        self.timeout = timeout
        self.status = 504 if timeout else 502
        super().__init__(message)

    def public_detail(self) -> dict[str, Any]:
        return {"backend": self.backend, "provider_status": self.provider_status}


@dataclass
class Attempt:
    """One try at producing schema-valid output, kept for diagnosis."""

    backend: str
    raw: str
    errors: list[str] = field(default_factory=list)
    repaired: bool = False


class OutputError(FeaturelmError):
    """The model could not produce schema-valid output within the attempt budget."""

    status = 502
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
