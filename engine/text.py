"""Text that cannot be encoded: lone UTF-16 surrogates (`"\\ud800"` in JSON or YAML) are valid
Python strings but not Unicode text, and fail wherever text is encoded (token counts, logs,
responses, the store). They are refused where data enters, with the path that holds one."""

from __future__ import annotations

from typing import Any


def _bad(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def lone_surrogate_path(value: Any, root: str = "$") -> str | None:
    """The JSON path of the first string (value or key) in `value` that holds a lone
    surrogate, or None. Iterative: hostile nesting is refused elsewhere, never here."""
    stack: list[tuple[Any, str]] = [(value, root)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _bad(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{key}" if isinstance(key, str) and not _bad(key) \
                    else f"{path}[?]"
                if isinstance(key, str) and _bad(key):
                    return child_path
                stack.append((child, child_path))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
    return None


def describe(path: str) -> str:
    return f"{path} holds invalid Unicode (a lone surrogate such as \\ud800); send UTF-8 text"
