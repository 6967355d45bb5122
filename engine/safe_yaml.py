"""Bounded YAML loading for files tenants and operators write.

PyYAML's SafeLoader already refuses `!!python/...` tags. On top of it this loader refuses
anchors/aliases (the "billion laughs" bomb expands through them, and contracts never need
them), caps the document size before parsing, and caps nesting depth while composing, so
no document is expanded before it is known to be small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from featurelm.engine.errors import ContractError, ContractIssue

MAX_DEPTH = 64


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.YAMLError(
                f"line {event.start_mark.line + 1}: YAML aliases (*name) are not allowed"
            )
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if getattr(event, "anchor", None):
            raise yaml.YAMLError(
                f"line {event.start_mark.line + 1}: YAML anchors (&name) are not allowed"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(
                    f"line {event.start_mark.line + 1}: nesting deeper than {MAX_DEPTH} levels"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _refuse_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    # Which of two values for one key wins differs between parsers; JSON bodies refuse
    # duplicates too, so a file means one thing wherever it is read.
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # an unhashable key: the constructor below refuses it
        if duplicate:
            raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
    return loader.construct_mapping(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:map", _refuse_duplicate_keys)


def load_yaml_text(text: str, *, source: str, max_bytes: int) -> Any:
    """Parse one YAML document safely, raising ContractError that names `source`."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > max_bytes:
        raise ContractError([ContractIssue(
            source, "", f"file is {size} bytes, over the {max_bytes}-byte limit",
            "split the content or shorten it")])
    try:
        loader = _BoundedLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        message = str(exc).strip().replace("\n", " ")
        if "could not determine a constructor" in message:
            message = "custom YAML tags (such as !!python/...) are not allowed"
        raise ContractError([ContractIssue(source, "", f"invalid YAML: {message}",
                                           "fix the YAML syntax")]) from None


def load_yaml_file(path: Path, *, max_bytes: int) -> Any:
    size = path.stat().st_size
    if size > max_bytes:
        raise ContractError([ContractIssue(
            str(path), "", f"file is {size} bytes, over the {max_bytes}-byte limit",
            "split the content or shorten it")])
    return load_yaml_text(path.read_text(encoding="utf-8"), source=str(path), max_bytes=max_bytes)
