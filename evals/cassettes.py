"""Cassettes: recorded backend exchanges, one JSON file per feature, keyed by a request hash.

The key covers what a request means to the model (model, messages, output schema, decoding
parameters) and nothing that varies between identical calls (per-tenant cache salt, labels,
timeout) or that only says how it is sent (the backend's name in featurelm.yaml, the dialect a
backend uses to constrain decoding). What is stored is scrubbed of anything that looks like a
credential.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurelm.engine.types import Completion, CompletionRequest, Usage

CASSETTE_FORMAT = 1
REDACTED = "[REDACTED]"
#: Where an exchange without a feature label is filed.
UNLABELLED = "_unlabelled"

_SECRET_PATTERNS = [
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
    re.compile(r"\bflm_[A-Za-z0-9_-]{8,}"),
    re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE),
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\bAIza[A-Za-z0-9_-]{30,}"),
]
_SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def request_key(model: str, request: CompletionRequest) -> str:
    """Canonical hash of what decides the answer to `request`.

    Renaming a backend, or changing how a backend turns the schema into a decoding constraint,
    keeps the recordings; a different model, prompt, schema or decoding setting does not.
    """
    material = {
        "model": model,
        "messages": [[m.role, m.content] for m in request.messages],
        "output_schema": request.output_schema,
        # 0 and 0.0 are the same setting; JSON would spell them differently.
        "temperature": float(request.temperature),
        "max_tokens": int(request.max_tokens),
        "params": dict(request.params),
    }
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def scrub(value: Any) -> Any:
    """A copy of a JSON value with credential-looking substrings replaced by [REDACTED]."""
    if isinstance(value, str):
        for pattern in _SECRET_PATTERNS:
            value = pattern.sub(REDACTED, value)
        return value
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, dict):
        return {scrub(str(k)): scrub(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Recording:
    case: str | None
    completion: Completion


class CassetteStore:
    """Reads and writes the cassettes under one directory.

    With `fresh`, existing files are not read: a feature recorded again gets a new cassette
    instead of replies appended to stale ones.
    """

    def __init__(self, directory: Path, *, fresh: bool = False):
        self.directory = directory
        self.fresh = fresh
        self._lock = threading.Lock()
        self._loaded: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        #: How many replies to a key were served, so repeated calls replay in recorded order.
        self._served: dict[tuple[str, str], int] = defaultdict(int)

    @staticmethod
    def file_for(labels: Any) -> str:
        feature = str(labels.get("feature", "")) if labels else ""
        return feature if _SAFE_NAME.match(feature) else UNLABELLED

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def _cassette(self, name: str) -> dict[str, Any]:
        if name not in self._loaded:
            path = self.path(name)
            if path.exists() and not self.fresh:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("format") != CASSETTE_FORMAT:
                    raise ValueError(f"{path}: unsupported cassette format "
                                     f"{data.get('format')!r}")
                self._loaded[name] = data
            else:
                self._loaded[name] = {"format": CASSETTE_FORMAT, "feature": name,
                                      "exchanges": {}}
        return self._loaded[name]

    def record(self, backend: str, model: str, request: CompletionRequest,
               completion: Completion) -> None:
        name = self.file_for(request.labels)
        key = request_key(model, request)
        with self._lock:
            exchanges = self._cassette(name)["exchanges"]
            entry = exchanges.setdefault(key, {"case": scrub(request.labels.get("case")),
                                               "request": _request_document(backend, model,
                                                                            request),
                                               "replies": []})
            entry["replies"].append(scrub(_completion_document(completion)))
            self._dirty.add(name)

    def lookup(self, backend: str, model: str, request: CompletionRequest) -> Completion | None:
        """The next recorded reply to this request, or None when it was never recorded."""
        name = self.file_for(request.labels)
        key = request_key(model, request)
        with self._lock:
            entry = self._cassette(name)["exchanges"].get(key)
            if entry is None or not entry["replies"]:
                return None
            replies = entry["replies"]
            served = self._served[(name, key)]
            self._served[(name, key)] = served + 1
            # Past the recorded count the last reply repeats, as a re-run would most likely give.
            reply = replies[min(served, len(replies) - 1)]
        usage = reply.get("usage", {})
        return Completion(text=reply["text"], backend=reply["backend"], model=reply["model"],
                          usage=Usage(prompt_tokens=usage.get("prompt_tokens", 0),
                                      completion_tokens=usage.get("completion_tokens", 0)),
                          finish_reason=reply.get("finish_reason", "stop"))

    def save(self) -> list[Path]:
        """Write every cassette that changed; returns the files written."""
        written = []
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            for name in sorted(self._dirty):
                path = self.path(name)
                text = json.dumps(self._loaded[name], indent=2, sort_keys=True,
                                  ensure_ascii=False) + "\n"
                # Write then rename, so an interrupted run never leaves half a cassette.
                fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
                os.fchmod(fd, 0o644)  # cassettes are committed; mkstemp's 0600 would stick
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(text)
                os.replace(tmp, path)
                written.append(path)
            self._dirty.clear()
        return written


def _request_document(backend: str, model: str, request: CompletionRequest) -> dict[str, Any]:
    """The readable part of a request; no cache salt, timeout, tenant label or header."""
    document: dict[str, Any] = scrub({
        "backend": backend,
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "output_schema": request.output_schema,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "params": dict(request.params),
    })
    return document


def _completion_document(completion: Completion) -> dict[str, Any]:
    return {
        "text": completion.text,
        "backend": completion.backend,
        "model": completion.model,
        "usage": {"prompt_tokens": completion.usage.prompt_tokens,
                  "completion_tokens": completion.usage.completion_tokens},
        "finish_reason": completion.finish_reason,
    }
