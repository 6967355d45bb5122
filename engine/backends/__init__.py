"""Backend adapters, looked up by the `kind` a backend declares in featurelm.yaml.

Each adapter module registers a factory with `@register("kind")`. Modules with heavy or
optional imports (llama.cpp, litellm) are imported only when a backend of their kind is built.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError

from featurelm.engine.backends.base import Backend
from featurelm.engine.config import BackendConfig, pydantic_issues
from featurelm.engine.errors import ContractError, ContractIssue
from featurelm.engine.types import (
    Capabilities,
    Completion,
    CompletionRequest,
    Message,
    StructuredDialect,
)

BackendFactory = Callable[[str, BackendConfig], Backend]
OptionsT = TypeVar("OptionsT", bound=BaseModel)

_FACTORIES: dict[str, BackendFactory] = {}

#: kind -> module that registers it; imported on first use so unused adapters cost nothing.
ADAPTER_MODULES: dict[str, str] = {
    "scripted": "featurelm.engine.backends.scripted",
    "local": "featurelm.engine.backends.local",
    "openai": "featurelm.engine.backends.openai_compat",
    "hosted": "featurelm.engine.backends.hosted",
}
#: kind -> the extra that installs its library (a plain install has none of them).
ADAPTER_EXTRAS: dict[str, str] = {"hosted": "hosted"}


def register(kind: str) -> Callable[[BackendFactory], BackendFactory]:
    def decorate(factory: BackendFactory) -> BackendFactory:
        _FACTORIES[kind] = factory
        return factory

    return decorate


def build_backend(name: str, config: BackendConfig) -> Backend:
    """Instantiate the adapter for `config.kind`; raises ContractError for an unknown kind."""
    if config.kind not in _FACTORIES and config.kind in ADAPTER_MODULES:
        try:
            importlib.import_module(ADAPTER_MODULES[config.kind])
        except ModuleNotFoundError as exc:
            extra = ADAPTER_EXTRAS.get(config.kind)
            if extra is None or (exc.name or "featurelm").startswith("featurelm"):
                raise
            raise ContractError([ContractIssue(
                "featurelm.yaml", f"backends.{name}.kind",
                f"kind {config.kind!r} needs {exc.name}, which is not installed",
                f"pip install 'featurelm[{extra}]'")]) from None
    factory = _FACTORIES.get(config.kind)
    if factory is None:
        raise ContractError([ContractIssue(
            "featurelm.yaml", f"backends.{name}.kind", f"unknown backend kind {config.kind!r}",
            f"use one of: {', '.join(sorted(ADAPTER_MODULES))}")])
    return factory(name, config)


def adapter_options(name: str, model: type[OptionsT], raw: Mapping[str, Any]) -> OptionsT:
    """Backend `name`'s `options:`, checked by its adapter's model; errors carry the YAML path."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        issues = pydantic_issues("featurelm.yaml", exc)
        for issue in issues:
            issue.path = f"backends.{name}.options.{issue.path}"
        raise ContractError(issues) from None


def adapter_dialect(name: str, config: BackendConfig, allowed: Collection[str],
                    refusal: str) -> StructuredDialect:
    """The backend's structured-output dialect (json_schema unless declared), if allowed."""
    structured = config.structured or "json_schema"
    if structured not in allowed:
        raise ContractError([ContractIssue(
            "featurelm.yaml", f"backends.{name}.structured", f"{structured!r} {refusal}",
            f"use one of: {', '.join(allowed)}")])
    return cast(StructuredDialect, structured)


def api_key_from_env(name: str, env: str | None) -> str | None:
    """The API key held in environment variable `env`; the key itself never enters config."""
    if not env:
        return None
    key = os.environ.get(env)
    if not key:
        raise ContractError([ContractIssue(
            "featurelm.yaml", f"backends.{name}.options.api_key_env",
            f"environment variable {env} is not set",
            "export it before starting, or remove api_key_env")])
    # A key read from a mounted secret file often ends in a newline; one inside it would
    # break the request head it travels in.
    key = key.strip()
    if not key.isprintable():
        raise ContractError([ContractIssue(
            "featurelm.yaml", f"backends.{name}.options.api_key_env",
            f"environment variable {env} holds a line break or control character",
            "store the key alone, on one line")])
    return key


__all__ = [
    "ADAPTER_MODULES",
    "Backend",
    "Capabilities",
    "Completion",
    "CompletionRequest",
    "Message",
    "adapter_dialect",
    "adapter_options",
    "api_key_from_env",
    "build_backend",
    "register",
]
