"""featurelm: product features declared as contracts, served by LLMs with guaranteed output.

The public Python API for product code that calls features in-process (docs/python.md):

    async with Engine.from_config("featurelm.yaml") as engine:
        result = await engine.run("classify_ticket", {"subject": "...", "body": "..."})
        result.output, result.meta.backend

Everything named in `__all__` is stable; other modules are the engine's internals.
"""

from featurelm.engine import (
    BackendError,
    ContractError,
    Engine,
    FeaturelmError,
    InputError,
    Meta,
    NotFoundError,
    OutputError,
    Result,
    RunOptions,
)
from featurelm.engine.stats import EngineStats

__all__ = [
    "BackendError",
    "ContractError",
    "Engine",
    "EngineStats",
    "FeaturelmError",
    "InputError",
    "Meta",
    "NotFoundError",
    "OutputError",
    "Result",
    "RunOptions",
]
