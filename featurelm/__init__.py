"""featurelm: product features declared as contracts, served by LLMs with guaranteed output.

The public Python API for product code that calls features in-process (docs/python.md):

    async with Engine.from_config("featurelm.yaml") as engine:
        result = await engine.run("classify_ticket", {"subject": "...", "body": "..."})
        result.output, result.meta.backend

Everything named in `__all__` is stable; other modules are the engine's internals, except for
the extension points docs/python.md lists (for serving, evals and the command line).
"""

from featurelm.engine.engine import Engine, Meta, Result, RunOptions
from featurelm.engine.errors import (
    Attempt,
    BackendError,
    BackendTimeout,
    ContractError,
    ContractIssue,
    FeaturelmError,
    InputError,
    NotFoundError,
    OutputError,
    SchemaViolation,
    TooLargeError,
    UnavailableError,
)
from featurelm.engine.stats import EngineStats
from featurelm.engine.streaming import Delta, Done, StreamEvent

# Errors an in-process call can raise (the HTTP-only ones, such as rate limits and API key
# refusals, belong to the server), and the records their attributes hold.
__all__ = [
    "Attempt",
    "BackendError",
    "BackendTimeout",
    "ContractError",
    "ContractIssue",
    "Delta",
    "Done",
    "Engine",
    "EngineStats",
    "FeaturelmError",
    "InputError",
    "Meta",
    "NotFoundError",
    "OutputError",
    "Result",
    "RunOptions",
    "SchemaViolation",
    "StreamEvent",
    "TooLargeError",
    "UnavailableError",
]
