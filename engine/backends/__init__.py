"""Backend adapters, looked up by the `kind` a backend declares in featurelm.yaml.

Each adapter module registers a factory with `@register("kind")`. Modules with heavy or
optional imports (llama.cpp, litellm) are imported only when a backend of their kind is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from engine.backends.base import Backend, Capabilities, Completion, CompletionRequest, Message
from engine.config import BackendConfig
from engine.errors import ContractError, ContractIssue

BackendFactory = Callable[[str, BackendConfig], Backend]

_FACTORIES: dict[str, BackendFactory] = {}

#: kind -> module that registers it; imported on first use so unused adapters cost nothing.
ADAPTER_MODULES: dict[str, str] = {
    "scripted": "engine.backends.scripted",
    "local": "engine.backends.local",
    "openai": "engine.backends.openai_compat",
    "hosted": "engine.backends.hosted",
}


def register(kind: str) -> Callable[[BackendFactory], BackendFactory]:
    def decorate(factory: BackendFactory) -> BackendFactory:
        _FACTORIES[kind] = factory
        return factory

    return decorate


def build_backend(name: str, config: BackendConfig) -> Backend:
    """Instantiate the adapter for `config.kind`; raises ContractError for an unknown kind."""
    if config.kind not in _FACTORIES and config.kind in ADAPTER_MODULES:
        importlib.import_module(ADAPTER_MODULES[config.kind])
    factory = _FACTORIES.get(config.kind)
    if factory is None:
        raise ContractError([ContractIssue(
            "featurelm.yaml", f"backends.{name}.kind", f"unknown backend kind {config.kind!r}",
            f"use one of: {', '.join(sorted(ADAPTER_MODULES))}")])
    return factory(name, config)


__all__ = [
    "ADAPTER_MODULES",
    "Backend",
    "Capabilities",
    "Completion",
    "CompletionRequest",
    "Message",
    "build_backend",
    "register",
]
