"""Bodies of the service's fixed endpoints (listing, contracts, admin, health), as pydantic
models so the OpenAPI spec and the responses cannot drift apart."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from featurelm.engine.contracts import TENANT_NAME


class FeatureSummary(BaseModel):
    name: str
    version: int
    description: str


class FeatureList(BaseModel):
    features: list[FeatureSummary]


class FeatureContract(BaseModel):
    name: str
    version: int
    description: str
    input: dict[str, Any] = Field(description="JSON Schema (2020-12) of the input object.")
    output: dict[str, Any] = Field(description="JSON Schema (2020-12) of the output object.")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description="Each dependency: 'ok', 'not used yet' (the "
                                               "store with auth off, before any key), or "
                                               "what is wrong.")


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=f"^{TENANT_NAME.pattern}$",
                      description="1-63 lowercase letters, digits, '-' or '_'.")


class TenantOut(BaseModel):
    name: str
    created_at: datetime


class TenantList(BaseModel):
    tenants: list[TenantOut]


class TenantCreated(BaseModel):
    name: str
    api_key: str = Field(description="Shown once: store it now.")


class OverrideVersionOut(BaseModel):
    tenant: str
    feature: str
    version: int
    content_hash: str
    author: str
    created_at: datetime
    active: bool


class OverrideVersionText(OverrideVersionOut):
    yaml_text: str


class OverrideVersionList(BaseModel):
    versions: list[OverrideVersionOut]


class RenderedMessage(BaseModel):
    role: str
    content: str


class ApplyOut(BaseModel):
    version: int | None = Field(description="The saved version; null for a dry run.")
    active: bool
    dry_run: bool
    rendered: list[list[RenderedMessage]] = Field(
        description="The prompt rendered for each of the feature's example inputs.")
    eval_pass_rate: float | None


class DiffOut(BaseModel):
    diff: str = Field(description="Unified diff from the first version to the second.")
