"""The error tree: one table from error kind to HTTP status, drawn truthfully in its docstring."""

from __future__ import annotations

import ast
import inspect
import pathlib
import re

import pytest

from featurelm.engine import errors
from featurelm.engine.backends.provider_errors import Failure, deadline_exceeded, to_backend_error
from featurelm.engine.cache.base import decode_outcome, encode_outcome
from featurelm.engine.errors import (
    HTTP_STATUS,
    BackendError,
    BackendTimeout,
    FeaturelmError,
    InputError,
    TooLargeError,
)

ROW = re.compile(r"^[\s│├└─]*(\w+)\s+(\d{3})\s+([\w-]+)", re.MULTILINE)


def tree_classes() -> list[type[FeaturelmError]]:
    return [c for c in vars(errors).values() if isinstance(c, type)
            and issubclass(c, FeaturelmError) and not c.__name__.startswith("_")]


def test_the_docstring_draws_every_error_with_its_status_and_type() -> None:
    drawn = {name: (int(status), kind) for name, status, kind in ROW.findall(errors.__doc__ or "")}
    actual = {c.__name__: (errors.http_status(c), c.kind) for c in tree_classes()}
    assert drawn == actual


def test_every_error_class_has_its_own_row_or_inherits_its_parents() -> None:
    for cls in tree_classes():
        parent = next(b for b in cls.__mro__[1:] if b in HTTP_STATUS or b is Exception)
        if cls not in HTTP_STATUS:
            assert errors.http_status(cls) == errors.http_status(parent)  # type: ignore[arg-type]


def test_a_subclass_outside_the_tree_takes_its_nearest_base_status() -> None:
    class AdapterSpecific(BackendTimeout):
        pass

    assert AdapterSpecific("slow", backend="x").status == 504


@pytest.mark.parametrize("module", ["engine", "serving", "evals", "featurelm"])
def test_no_status_is_picked_where_an_error_is_raised(module: str) -> None:
    """Statuses come from the table: no `status=` keyword and no `status = ` attribute on an
    error class anywhere else."""
    import featurelm

    root = pathlib.Path(featurelm.__file__).parent
    folder = root if module == "featurelm" else root / module
    for path in folder.rglob("*.py"):
        if path.name == "errors.py" and path.parent.name == "engine":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(b, ast.Name) and b.id.endswith(("Error", "Unavailable"))
                    for b in node.bases):
                assigned = {t.id for s in node.body if isinstance(s, ast.Assign | ast.AnnAssign)
                            for t in (s.targets if isinstance(s, ast.Assign) else [s.target])
                            if isinstance(t, ast.Name)}
                assert "status" not in assigned, f"{path}: class {node.name} sets a status"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id.endswith("Error"):
                assert "status" not in {k.arg for k in node.keywords}, \
                    f"{path}:{node.lineno}: {node.func.id}(status=...)"


def test_size_budget_errors_are_input_errors_with_413() -> None:
    error = TooLargeError("input is 300000 bytes")
    assert isinstance(error, InputError) and error.status == 413 and error.kind == "input"


def test_a_provider_timeout_becomes_a_504_and_other_failures_a_502() -> None:
    timed_out = to_backend_error(Failure(what="timed out", retryable=True, timeout=True), "vllm")
    refused = to_backend_error(Failure(what="HTTP 500", retryable=True, status=500), "vllm")
    assert (type(timed_out), timed_out.status, timed_out.timeout) == (BackendTimeout, 504, True)
    assert (type(refused), refused.status, refused.timeout) == (BackendError, 502, False)
    assert deadline_exceeded("vllm").status == 504


def test_a_timeout_published_to_other_replicas_stays_a_timeout() -> None:
    payload = encode_outcome(deadline_exceeded("vllm", "route 'default' after 2 attempt(s)"))
    assert payload is not None
    again = decode_outcome(payload)
    assert isinstance(again, BackendTimeout) and again.status == 504


def test_retry_after_is_carried_by_the_errors_that_say_when_to_come_back() -> None:
    limited = errors.RateLimitedError("over 3 calls per minute", retry_after=12)
    assert (limited.status, limited.retry_after) == (429, 12)
    assert inspect.signature(errors.QuotaExceededError).parameters["retry_after"]
