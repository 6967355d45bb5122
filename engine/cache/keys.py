"""Canonical cache keys: hashes of length-delimited canonical JSON, one field at a time."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from featurelm.engine import json_bytes
from featurelm.engine.loader import LoadedFeature
from featurelm.engine.types import CompletionRequest

#: Bumped when the key material changes, so old entries are never misread.
KEY_VERSION = "featurelm-cache-3"


@dataclass(frozen=True)
class BackendId:
    """What identifies a backend's answers: its configured name, adapter kind and model."""

    name: str
    kind: str
    model: str


@dataclass(frozen=True)
class CacheKeys:
    """The keys of one call.

    The answering backend is unknown until the call returns, and a fallback may answer, so an
    entry is stored under the backend that actually answered (`entry_for`) and a lookup tries
    every backend of the route's chain in fallback order (`lookup`, one round trip). An
    answer is then reused wherever its backend serves, and a chain change never serves an
    answer from a backend that left it. Coalescing is per call, so `flight` hashes the chain.
    """

    lookup: tuple[tuple[str, str], ...]
    flight: str

    def entry_for(self, backend: str) -> str | None:
        return next((key for name, key in self.lookup if name == backend), None)


def namespace(feature: LoadedFeature, tenant: str | None) -> list[str]:
    """Tenants are isolated; a `cache.shared` feature pools them only while no override is
    active, since an override may change what the same input produces."""
    if feature.spec.cache.shared and feature.override_version is None:
        return ["shared"]
    if tenant is None:
        return ["operator"]
    return ["tenant", tenant]


def _feed(hasher: Any, encoded: bytes) -> None:
    # Prefixed by its byte length, so no field can spill into its neighbour.
    hasher.update(b"%d:" % len(encoded))
    hasher.update(encoded)


def _digest(*fields: Any, texts: Sequence[str] = ()) -> str:
    """Each field as JSON with sorted keys (key order never matters), then each text as its
    own UTF-8 bytes: the rendered prompt, by far the largest part of the material, is hashed
    as it is instead of being escaped into JSON first."""
    hasher = hashlib.sha256()
    for value in fields:
        _feed(hasher, json_bytes.dumps(value, sort_keys=True))
    _feed(hasher, b"%d" % len(texts))
    for text in texts:
        # surrogatepass: a lone surrogate still hashes, and to bytes no valid text has.
        _feed(hasher, text.encode("utf-8", "surrogatepass"))
    return hasher.hexdigest()


def cache_keys(feature: LoadedFeature, request: CompletionRequest, *, tenant: str | None,
               chain: Sequence[BackendId]) -> CacheKeys:
    """Keys over everything that decides the output: tenant namespace, feature, effective
    contract and override version, rendered messages, backend and model, decoding
    parameters and output schema."""
    common = (
        KEY_VERSION,
        namespace(feature, tenant),
        feature.name,
        feature.contract_hash,
        feature.override_version,
        {"temperature": request.temperature, "max_tokens": request.max_tokens,
         "params": dict(request.params)},
        feature.output_schema_hash,
    )
    # The messages dominate the key material: encode and hash them once, then derive each
    # backend's entry key and the flight key from that digest.
    call = _digest(*common, texts=[part for m in request.messages
                                   for part in (m.role, m.content)])
    backends = [[b.name, b.kind, b.model] for b in chain]
    return CacheKeys(
        lookup=tuple((b[0], "entry:" + _digest(call, b)) for b in backends),
        flight="flight:" + _digest(call, backends),
    )
