"""Shared fixtures: throwaway featurelm projects built from small feature documents."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

# The suite runs offline: litellm must use its bundled price map, whoever imports it first.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Interpreters the tests start import the installed package: the checkout's featurelm/ (the
# working directory for `python -c` and `-m`) must not shadow it.
os.environ["PYTHONSAFEPATH"] = "1"

SENTIMENT: dict[str, Any] = {
    "name": "sentiment",
    "description": "Classify the sentiment of a review.",
    "input": {"type": "object", "additionalProperties": False, "required": ["text"],
              "properties": {"text": {"type": "string", "maxLength": 2000}}},
    "output": {"type": "object", "additionalProperties": False, "required": ["sentiment"],
               "properties": {"sentiment": {"type": "string",
                                            "enum": ["positive", "negative", "neutral"]}}},
    "prompt": {"system": "You classify the sentiment of product reviews.",
               "user": "Review: {{ text }}"},
    "examples": [{"input": {"text": "Broke after a day."}, "output": {"sentiment": "negative"}}],
    "model": {"max_output_tokens": 64},
}

ProjectFactory = Callable[..., Path]


def free_port() -> int:
    """A loopback port nothing listens on, for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fresh_rate_window(need_s: float = 10.0) -> None:
    """Rate limits count calls per wall-clock minute: when this minute has less than `need_s`
    left, wait for the next one, so the calls a test counts all fall in one window."""
    left = 60 - time.time() % 60
    if left < need_s:
        time.sleep(left + 0.05)


def scripted(*replies: str) -> dict[str, Any]:
    """Config of a scripted backend answering `replies` in order (the last one repeats)."""
    return {"kind": "scripted", "options": {"replies": list(replies)}}


@pytest.fixture
def make_project(tmp_path: Path) -> ProjectFactory:
    """Write features, prompts and a featurelm.yaml into tmp_path; return the config path."""

    def make(features: list[dict[str, Any]] | None = None, *,
             backends: dict[str, Any] | None = None, routes: dict[str, Any] | None = None,
             prompts: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
             raw_features: dict[str, str] | None = None) -> Path:
        (tmp_path / "features").mkdir(exist_ok=True)
        (tmp_path / "prompts").mkdir(exist_ok=True)
        for feature in features if features is not None else [SENTIMENT]:
            (tmp_path / "features" / f"{feature['name']}.yaml").write_text(
                yaml.safe_dump(feature, sort_keys=False))
        for name, text in (raw_features or {}).items():
            (tmp_path / "features" / name).write_text(text)
        for name, text in (prompts or {}).items():
            (tmp_path / "prompts" / name).write_text(text)
        config = {
            "backends": backends or {"primary": scripted('{"sentiment": "positive"}')},
            "routes": routes or {"default": {"backends": ["primary"]}},
            "cache": "memory",
            "store": f"sqlite:///{tmp_path / 'featurelm.db'}",
            **(extra or {}),
        }
        path = tmp_path / "featurelm.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return make


def last_line_of_python(script: str) -> str:
    """Run `script` in a fresh interpreter (nothing imported yet) and return its last line."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]
