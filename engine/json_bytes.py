"""JSON on the per-call path: bodies sent to and read from backends, responses, stream events
and log lines.

orjson encodes and parses these several times faster than the standard library. The few values
it refuses (integers beyond 64 bits, lone surrogates, non-string keys; NaN and Infinity when
parsing) take the standard library's path instead, so every value still encodes, and every
text parses, as `json.loads` would parse it but for one difference: `loads` reads an integer
beyond 64 bits as a float. It is for backends' bodies, whose numbers are token counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson


def dumps(value: Any, *, default: Callable[[Any], Any] | None = None,
          sort_keys: bool = False) -> bytes:
    """`value` as UTF-8 JSON, compact; with `sort_keys`, the same bytes whatever the order
    of its keys (for hashing)."""
    try:
        return orjson.dumps(value, default=default,
                            option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, default=default, separators=(",", ":"),
                          sort_keys=sort_keys).encode()


def loads(text: bytes | str) -> Any:
    """`json.loads(text)`, faster; an integer beyond 64 bits comes back as a float."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # a ValueError, as the standard library raises
        return json.loads(text)
