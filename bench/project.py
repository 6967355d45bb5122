"""Throwaway configs for a bench run: a featurelm project (one small feature) and LiteLLM's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from bench.mock import VALID_CONTENT

FEATURE = "sentiment"
INPUT: dict[str, Any] = {"text": "The battery lasts two days and the screen is sharp."}
SYSTEM = "You classify the sentiment of product reviews."
OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["sentiment"],
    "properties": {"sentiment": {"type": "string",
                                 "enum": ["positive", "negative", "neutral"]}},
}
FEATURE_SPEC: dict[str, Any] = {
    "name": FEATURE,
    "version": 1,
    "description": "Classify the sentiment of a review.",
    "input": {"type": "object", "additionalProperties": False, "required": ["text"],
              "properties": {"text": {"type": "string", "maxLength": 2000}}},
    "output": OUTPUT_SCHEMA,
    "prompt": {"system": SYSTEM, "user": "Review: {{ text }}"},
    "examples": [{"input": {"text": "Broke after a day."}, "output": {"sentiment": "negative"}}],
    "model": {"temperature": 0, "max_output_tokens": 64, "max_attempts": 3},
    "cache": {"enabled": True, "ttl": 600},
}
assert json.loads(VALID_CONTENT)["sentiment"] in OUTPUT_SCHEMA["properties"]["sentiment"]["enum"]


def write_featurelm_project(root: Path, *, mock_url: str, cache: str = "none",
                            key_prefix: str = "featurelm:", name: str = "featurelm",
                            extra: dict[str, Any] | None = None) -> Path:
    """A project whose one route is the mock (kind openai); returns the config path.

    Auth is off and the rate limit unlimited: the bench measures the call path, not a
    tenant's quota (600 calls a minute by default would throttle the throughput row)."""
    project = root / name
    (project / "features").mkdir(parents=True, exist_ok=True)
    (project / "prompts").mkdir(exist_ok=True)
    (project / "features" / f"{FEATURE}.yaml").write_text(
        yaml.safe_dump(FEATURE_SPEC, sort_keys=False))
    config = {
        "features_dir": "features",
        "prompts_dir": "prompts",
        "backends": {"mock": {"kind": "openai", "model": "mock",
                              "options": {"base_urls": [f"{mock_url}/v1"]}}},
        "routes": {"default": {"backends": ["mock"]}},
        "cache": cache,
        "cache_settings": {"key_prefix": key_prefix},
        "store": f"sqlite:///{project / 'featurelm.db'}",
        "auth": "off",
        "http": {"rate_limit_per_minute": 0, "drain_s": 0},
        **(extra or {}),
    }
    path = project / "featurelm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_litellm_config(root: Path, *, mock_url: str) -> Path:
    """LiteLLM proxy with one model on the mock; no master key, database or callbacks."""
    config = {
        "model_list": [{"model_name": "mock", "litellm_params": {
            "model": "openai/mock", "api_base": f"{mock_url}/v1", "api_key": "sk-bench"}}],
        "litellm_settings": {"drop_params": True, "telemetry": False, "set_verbose": False,
                             "turn_off_message_logging": True, "success_callback": [],
                             "failure_callback": [], "callbacks": []},
        # No key, like featurelm's `auth: off`: neither side spends time on authentication.
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True,
                             "dangerously_permit_weak_or_unset_master_key": True},
    }
    path = root / "litellm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def chat_request() -> dict[str, Any]:
    """What featurelm sends the mock for INPUT, as a direct caller would send it: the same
    messages (without the few-shot example turns) and the same json_schema response format."""
    return {
        "model": "mock",
        "messages": [{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": f"Review: {INPUT['text']}"}],
        "temperature": 0,
        "max_tokens": 64,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "output", "schema": OUTPUT_SCHEMA, "strict": True}},
    }


def feature_request(cache: str = "default") -> dict[str, Any]:
    return {"input": INPUT, "options": {"cache": cache}}
