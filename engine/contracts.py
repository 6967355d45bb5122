"""The feature contract: what a `features/<name>.yaml` file may say, as pydantic models.

These models check shape only. Semantic checks (schemas are valid JSON Schema, templates
compile and reference declared fields, examples validate, routes exist) live in
`engine.loader`, which reports every problem with file, YAML path and fix.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
#: A tenant's name: it appears in URLs, cache namespaces and metric labels.
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

#: Fields a feature may let tenants override. The input and output schemas are the product's
#: contract and are deliberately not in this list.
OverridableField = Literal[
    "description",
    "prompt",
    "prompt.system",
    "prompt.user",
    "examples",
    "model.route",
    "model.temperature",
    "model.max_output_tokens",
    "model.params",
    "cache.ttl",
    "evals.threshold",
]


#: `input` and `output` are JSON Schemas: published as such, editors check them as you type.
_METASCHEMA: dict[str, Any] = {
    "$ref": "https://json-schema.org/draft/2020-12/schema",
    "additionalProperties": True}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptSpec(Strict):
    """Jinja2 templates for the system and user turns, inline or as a file under prompts/."""

    system: str | None = Field(None, description="Inline system template.")
    system_file: str | None = Field(None, description="System template file, relative to prompts/.")
    user: str | None = Field(None, description="Inline user template.")
    user_file: str | None = Field(None, description="User template file, relative to prompts/.")

    @model_validator(mode="after")
    def _one_source_each(self) -> PromptSpec:
        if self.system is not None and self.system_file is not None:
            raise ValueError("give either 'system' or 'system_file', not both")
        if self.user is not None and self.user_file is not None:
            raise ValueError("give either 'user' or 'user_file', not both")
        if self.user is None and self.user_file is None:
            raise ValueError("a prompt needs a user template: set 'user' or 'user_file'")
        return self


class Example(Strict):
    """A few-shot pair, rendered as a user turn and an assistant turn before the real input."""

    input: dict[str, Any]
    output: dict[str, Any]


class DecodingParams(Strict):
    """Decoding parameters beyond temperature; only these reach a backend."""

    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=1000)
    seed: int | None = None
    stop: list[str] | None = Field(None, max_length=8)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)

    def as_request_params(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ModelPolicy(Strict):
    route: str = Field("default", description="Route name from featurelm.yaml.")
    allowed_routes: list[str] = Field(
        default_factory=list,
        description="Routes a tenant override may switch to (the feature's own is always allowed).",
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_output_tokens: int = Field(512, ge=1, le=32768)
    max_attempts: int = Field(3, ge=1, le=8, description="Tries to get schema-valid output.")
    params: DecodingParams = Field(default_factory=DecodingParams)


class CachePolicy(Strict):
    enabled: bool = True
    ttl: int = Field(3600, ge=0, le=30 * 24 * 3600, description="Seconds; 0 = no expiry.")
    shared: bool = Field(
        False,
        description="Share entries across tenants that use the unmodified base feature.",
    )


class EvalPolicy(Strict):
    dataset: str | None = Field(None, description="Dataset path, relative to the repo root.")
    threshold: float = Field(0.8, ge=0.0, le=1.0, description="Minimum pass rate.")
    replay_threshold: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Minimum pass rate when recording or replaying cassettes (the CI gate), "
                    "where the recorded model may be far weaker than production's; default: "
                    "threshold.")


class FeatureSpec(Strict):
    """One feature file."""

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(1, ge=1)
    description: str = ""
    input: dict[str, Any] = Field(
        description="JSON Schema of the input object (draft per `$schema`; 2020-12 by default).",
        json_schema_extra=_METASCHEMA)
    output: dict[str, Any] = Field(
        description="JSON Schema of the output object (draft per `$schema`; 2020-12 by "
                    "default).", json_schema_extra=_METASCHEMA)
    prompt: PromptSpec
    examples: list[Example] = Field(default_factory=list, max_length=32)
    model: ModelPolicy = Field(default_factory=ModelPolicy)
    cache: CachePolicy = Field(default_factory=CachePolicy)
    overridable: list[OverridableField] = Field(default_factory=list)
    evals: EvalPolicy = Field(default_factory=EvalPolicy)
    formats: Literal["enforce", "ignore"] = Field(
        "enforce",
        description="'enforce': `format` (date, email, uri, ...) is checked on inputs, outputs "
                    "and examples. 'ignore': `format` is dropped from both schemas, as served "
                    "and as published in the OpenAPI spec.")
