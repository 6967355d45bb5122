"""featurelm's core library: feature contracts, prompt rendering, backends, structured output."""

from featurelm.engine.engine import Engine, Meta, Result, RunOptions
from featurelm.engine.errors import (
    BackendError,
    ContractError,
    FeaturelmError,
    InputError,
    NotFoundError,
    OutputError,
)

__all__ = [
    "BackendError",
    "ContractError",
    "Engine",
    "FeaturelmError",
    "InputError",
    "Meta",
    "NotFoundError",
    "OutputError",
    "Result",
    "RunOptions",
]
