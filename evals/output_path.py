"""Dotted paths into a feature's output ("category", "items.0.sku"), with failures that say why."""

from __future__ import annotations

from typing import Any


class PathMissing(LookupError):
    """The path does not lead to a value in this output."""


def resolve(document: Any, path: str) -> Any:
    """The value at `path`; an empty path is the whole document.

    List elements are addressed by their index; a negative index counts from the end.
    """
    if path == "":
        return document
    current = document
    walked: list[str] = []
    for part in path.split("."):
        where = ".".join(walked) or "output"
        if isinstance(current, dict):
            if part not in current:
                keys = ", ".join(sorted(map(str, current))) or "none"
                raise PathMissing(f"{path!r} not found: {where} has no key {part!r} "
                                  f"(keys: {keys})")
            current = current[part]
        elif isinstance(current, list):
            try:
                index = int(part)
            except ValueError:
                raise PathMissing(f"{path!r} not found: {where} is a list, "
                                  f"{part!r} is not an index") from None
            if not -len(current) <= index < len(current):
                raise PathMissing(f"{path!r} not found: {where} has {len(current)} "
                                  f"element(s), no index {index}")
            current = current[index]
        else:
            raise PathMissing(f"{path!r} not found: {where} is {type_name(current)}, "
                              f"not an object or list")
        walked.append(part)
    return current


def type_name(value: Any) -> str:
    """The JSON type of a value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
