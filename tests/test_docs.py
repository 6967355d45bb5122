"""Every configuration knob is documented in docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from featurelm.engine.backends.hosted import HostedOptions
from featurelm.engine.backends.local import LocalOptions
from featurelm.engine.backends.openai_compat import OpenAIOptions
from featurelm.engine.backends.scripted import ScriptedOptions
from featurelm.engine.config import (
    BackendConfig,
    CacheSettings,
    EngineConfig,
    HttpConfig,
    LimitsConfig,
    RouteConfig,
    TracesConfig,
)

DOC = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()


def test_every_config_field_is_documented() -> None:
    models: list[type[BaseModel]] = [EngineConfig, BackendConfig, RouteConfig, LimitsConfig,
                                     HttpConfig, CacheSettings, TracesConfig, OpenAIOptions,
                                     HostedOptions, LocalOptions, ScriptedOptions]
    missing = [f"{model.__name__}.{name}" for model in models
               for name, field in model.model_fields.items()
               if not field.exclude and f"`{name}`" not in DOC]
    assert missing == []
