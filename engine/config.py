"""The engine's configuration file (`featurelm.yaml`), as pydantic models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from featurelm.engine.errors import ContractError, ContractIssue
from featurelm.engine.safe_yaml import load_yaml_file

DEFAULT_CONFIG = "featurelm.yaml"
CONFIG_ENV = "FEATURELM_CONFIG"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendConfig(Strict):
    """One model endpoint. `options` is checked by the adapter registered for `kind`."""

    kind: str = Field(description="Adapter kind: local, scripted, openai, hosted.")
    model: str = Field("", description="Model name sent to the backend.")
    structured: str | None = Field(
        None,
        description="Structured-output dialect; default depends on kind "
        "(json_schema, structured_outputs, json_object_schema, grammar, none).",
    )
    context_window: int | None = Field(None, ge=256, description="Tokens; default per kind.")
    tokenizer: str | None = Field(None, description="tiktoken encoding for token budgets.")
    input_price_per_mtok: float = Field(0.0, ge=0, description="Cost per million prompt tokens.")
    output_price_per_mtok: float = Field(0.0, ge=0, description="Cost per million output tokens.")
    options: dict[str, Any] = Field(default_factory=dict, description="Adapter-specific settings.")


class RouteConfig(Strict):
    """An ordered fallback chain of backend names."""

    backends: list[str] = Field(min_length=1)
    retries: int = Field(2, ge=0, le=10, description="Retries per backend on retryable errors.")
    hedge_after_ms: int | None = Field(
        None, ge=1, le=600_000, description="Hedged requests: a call still unanswered after "
        "this long is also sent to the next backend; the first answer wins and the other is "
        "cancelled. Off by default; streamed calls are never hedged. See docs/configuration.md.")


class LimitsConfig(Strict):
    max_template_chars: int = Field(20_000, ge=100)
    max_rendered_chars: int = Field(100_000, ge=100)
    render_timeout_s: float = Field(1.0, gt=0)
    render_memory_chars: int = Field(
        10_000_000, ge=100_000, description="Characters (and list items) one prompt render may "
        "build, intermediate values included; an operation that would pass it is refused "
        "before it allocates.")
    max_input_bytes: int = Field(256 * 1024, ge=1024)
    max_yaml_bytes: int = Field(256 * 1024, ge=1024)
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline of one call, all retries "
                                     "and fallbacks included.")


class HttpConfig(Strict):
    """Limits and knobs of the HTTP service (`featurelm serve`); see docs/http.md."""

    max_body_bytes: int = Field(
        1024 * 1024, ge=1024,
        description="Largest request body; a bigger Content-Length gets 413 before it is read.")
    rate_limit_per_minute: int = Field(
        600, ge=0, description="Feature calls (batch items count one each) per tenant per "
                               "minute; 0 = unlimited.")
    token_quota: int = Field(
        0, ge=0, description="Tokens (prompt + output) per tenant per quota window; "
                             "0 = unlimited.")
    token_quota_window_s: int = Field(86_400, ge=1, description="Length of the quota window.")
    batch_max_items: int = Field(100, ge=1, le=10_000, description="Inputs in one batch call.")
    batch_concurrency: int = Field(4, ge=1, le=64,
                                   description="Items of one batch call run at the same time.")
    idempotency_ttl_s: int = Field(86_400, ge=1,
                                   description="How long an Idempotency-Key's result is kept.")
    drain_s: float = Field(
        3.0, ge=0, le=300,
        description="After SIGTERM, /readyz answers 503 this long before the server stops "
                    "accepting connections, so the load balancer stops sending first.")
    body_timeout_s: float = Field(
        30.0, gt=0, le=600, description="A request body that stops arriving for this long "
        "gets 408 and the connection is closed (half-open and stalled clients).")
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="A connection that has not sent a whole request line "
        "and headers this long after connecting (or after its previous response) is closed "
        "(slow or half-open clients).")
    shutdown_grace_s: float = Field(
        30.0, gt=0, description="Then in-flight requests get this long to finish.")


class CacheSettings(Strict):
    """Tuning of the result cache named by `cache:`; the defaults suit one machine."""

    max_entries: int = Field(10_000, ge=1, description="Entries the memory cache keeps "
                             "before evicting the least recently used.")
    key_prefix: str = Field("featurelm:", max_length=64,
                            description="Prefix of every Redis key, to share a Redis safely.")
    redis_timeout_s: float = Field(
        0.25, gt=0, le=10, description="Longest wait for a Redis connection, connect or reply; "
        "past it the call goes on without the cache.")
    redis_max_connections: int = Field(50, ge=1, le=10_000,
                                       description="Size of the Redis connection pool.")
    redis_backoff_s: float = Field(
        5.0, ge=0, le=300, description="After a Redis failure, serve without it for this long "
        "(so a slow Redis costs one timeout per interval, not one per call).")
    lock_s: float = Field(
        10.0, gt=0, le=300, description="Lease of the replica leading a coalesced call, renewed "
        "while it works; if it dies, waiters on other replicas take over after this long.")
    log_interval_s: float = Field(60.0, ge=0, description="Log cache failures at most once "
                                  "per interval (they are always counted).")


class TraceSettings(Strict):
    """How calls are traced (see docs/observability.md); off unless sample_rate > 0."""

    sample_rate: float = Field(0.0, ge=0, le=1, description="Share of calls traced: 0 = none "
                               "(the default), 1 = every call.")
    retention_days: float = Field(7.0, gt=0, le=3650, description="Traces older than this are "
                                  "deleted from the store.")
    max_bytes_per_call: int = Field(
        65_536, ge=1024, le=16 * 1024 * 1024, description="Largest stored trace; longer text "
        "(prompt, replies, output) is cut to fit and the trace marked truncated.")
    redact: list[str] = Field(
        default_factory=list, description="Input paths ('customer.email', 'items.*.name') "
        "whose values are replaced by [redacted] everywhere in the trace.")


class TracesConfig(TraceSettings):
    features: dict[str, TraceSettings] = Field(
        default_factory=dict, description="Per-feature settings; a key set here replaces the "
        "global one for that feature.")

    def for_feature(self, name: str) -> TraceSettings:
        """The settings of feature `name`: the global ones, with its own keys on top."""
        own = self.features.get(name)
        base = self.model_dump(exclude={"features"})
        if own is not None:
            base.update(own.model_dump(include=own.model_fields_set))
        return TraceSettings.model_validate(base)


class EngineConfig(Strict):
    features_dir: Path = Path("features")
    prompts_dir: Path = Path("prompts")
    backends: dict[str, BackendConfig] = Field(
        default_factory=lambda: {"local": BackendConfig(kind="local", model="gemma-3-270m")}
    )
    routes: dict[str, RouteConfig] = Field(
        default_factory=lambda: {"default": RouteConfig(backends=["local"])}
    )
    cache: str = Field("memory", description="'memory', 'none' or a redis:// URL.")
    cache_settings: CacheSettings = Field(default_factory=CacheSettings)
    store: str = Field("sqlite:///featurelm.db", description="SQLAlchemy URL of the tenant store.")
    store_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Longest wait for a store connect, pooled connection or "
        "statement; past it the call gets 503 (or keeps the keys and overrides it knows).")
    #: Name of the environment variable holding the server secret used to derive per-tenant
    #: salts (vLLM cache_salt) and to hash API keys. Never the secret itself.
    secret_env: str = "FEATURELM_SECRET"
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: Literal["required", "off"] = Field(
        "required",
        description="'required': every HTTP call needs `Authorization: Bearer <api key>`. "
                    "'off': calls without a key run as no tenant (base features); only for a "
                    "single-user machine (the shipped featurelm.yaml); logged at startup.")
    http: HttpConfig = Field(default_factory=HttpConfig)
    traces: TracesConfig = Field(
        default_factory=TracesConfig, description="Call traces (opt-in): sampling, retention, "
        "size bound and redaction; see docs/observability.md.")
    override_refresh_s: float = Field(
        2.0, gt=0, le=60,
        description="How often a replica checks the store for activated or rolled-back overrides.")

    #: Directory the config file was read from; relative paths resolve against it.
    root: Path = Field(Path("."), exclude=True)

    @field_validator("cache")
    @classmethod
    def _known_cache(cls, value: str) -> str:
        # The URL itself is never echoed: it may carry a password.
        if value in ("memory", "none") or value.startswith(("redis://", "rediss://", "unix://")):
            return value
        raise ValueError("cache must be 'memory', 'none' or a redis://, rediss:// or unix:// URL")

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else self.root / p


def resolve_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to use: explicit path, then $FEATURELM_CONFIG, then ./featurelm.yaml."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    default = Path(DEFAULT_CONFIG)
    return default if default.exists() else None


def load_config(path: str | os.PathLike[str] | None = None) -> EngineConfig:
    """Load and check the engine config; with no file, the embedded defaults."""
    resolved = resolve_config_path(path)
    if resolved is None:
        return EngineConfig(root=Path.cwd())
    if not resolved.exists():
        raise ContractError([ContractIssue(str(resolved), "", "config file not found",
                                           f"create it or unset {CONFIG_ENV}")])
    data = load_yaml_file(resolved, max_bytes=1024 * 1024)
    if not isinstance(data, dict):
        raise ContractError([ContractIssue(str(resolved), "", "config must be a mapping")])
    try:
        config = EngineConfig.model_validate({**data, "root": resolved.parent.resolve()})
    except ValidationError as exc:
        raise ContractError(pydantic_issues(str(resolved), exc)) from None
    problems = [
        ContractIssue(str(resolved), f"routes.{route}.backends", f"unknown backend {name!r}",
                      f"define it under backends: (known: {', '.join(sorted(config.backends))})")
        for route, rc in config.routes.items() for name in rc.backends
        if name not in config.backends
    ]
    if problems:
        raise ContractError(problems)
    return config


def pydantic_issues(file: str, exc: ValidationError) -> list[ContractIssue]:
    """Turn pydantic's errors into ContractIssues with dotted YAML paths."""
    issues = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        fix = ""
        if err["type"] == "extra_forbidden":
            fix = "remove it; see schemas/feature.schema.json for the allowed keys"
        elif err["type"] == "missing":
            fix = "add it"
        issues.append(ContractIssue(file, path, err["msg"], fix))
    return issues
