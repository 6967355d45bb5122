"""The per-call JSON encoder: orjson's bytes, or the standard library's for what orjson refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from featurelm.engine.json_bytes import dumps, loads


@pytest.mark.parametrize("value", [
    {"output": {"sentiment": "négatif", "score": 0.25}, "meta": {"cached": False, "v": None}},
    {"big": 2**80, "small": -(2**70)},         # beyond 64 bits: orjson refuses
    {"text": "a\ud800b"},                      # a lone surrogate: not UTF-8 encodable
    {1: "int key", "k": [1, 2.5, "x"]},        # a non-string key: json writes it as "1"
])
def test_every_value_encodes_to_json_that_reads_back(value: dict[Any, Any]) -> None:
    encoded = dumps(value)
    assert isinstance(encoded, bytes)
    assert json.loads(encoded) == json.loads(json.dumps(value))


def test_text_is_utf8_not_escaped_and_compact() -> None:
    assert dumps({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'.encode()


def test_default_handles_what_json_cannot_encode() -> None:
    assert json.loads(dumps({"s": {1}}, default=str)) == {"s": "{1}"}


def test_sorted_keys_give_the_same_bytes_whatever_the_order() -> None:
    one = dumps({"b": 1, "a": {"y": [1], "x": None}}, sort_keys=True)
    assert one == dumps({"a": {"x": None, "y": [1]}, "b": 1}, sort_keys=True)
    assert one == b'{"a":{"x":null,"y":[1]},"b":1}'
    assert dumps({"b": 2**70, "a": 1}, sort_keys=True) == b'{"a":1,"b":%d}' % 2**70


@pytest.mark.parametrize("text", [
    b'{"choices": [{"message": {"content": "caf\\u00e9 \xc3\xa9"}}], "usage": null}',
    b'{"x": -1.5e-7, "n": -9223372036854775808}',
    b'{"score": NaN, "top": Infinity}',                    # not JSON, but json.loads reads it
    b'{"text": "a\\ud800b"}',                              # an escaped lone surrogate
    b'{"a": 1, "a": 2}',                                   # the last duplicate wins in both
    '{"str": "not bytes"}',
])
def test_every_text_parses_as_the_standard_library_parses_it(text: bytes | str) -> None:
    assert repr(loads(text)) == repr(json.loads(text))


def test_an_integer_beyond_64_bits_reads_as_a_float() -> None:
    assert loads(b'{"big": 100000000000000000000000}') == {"big": 1e23}


@pytest.mark.parametrize("text", [b"", b"{", b'{"a": 1} trailing', b"\xff\xfe{}"])
def test_what_the_standard_library_refuses_is_refused_with_a_value_error(text: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        loads(text)
