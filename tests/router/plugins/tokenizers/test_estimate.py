from __future__ import annotations

import zlib
from typing import Any

import pytest

from kvroute.router.framework import ApiKind, LLMRequest
from kvroute.router.plugins.tokenizers import EstimateTokenizer, make_tokenizer
from kvroute.router.plugins.tokenizers.chat import render_plain
from kvroute.simulator.tokenizer import Tokenizer as SimulatorTokenizer


def request(api: ApiKind, **body: Any) -> LLMRequest:
    return LLMRequest("r", "m", api, "", {"model": "m", **body}, {})


def test_one_token_per_four_characters_crc32_mod_128000() -> None:
    ids = EstimateTokenizer().encode("abcdefghij", special_tokens=True)

    assert ids == [zlib.crc32(b"abcd") % 128_000, zlib.crc32(b"efgh") % 128_000, zlib.crc32(b"ij") % 128_000]


@pytest.mark.parametrize("text", ["The capital of France is", "naïve café ☕ — ünïcödé " * 3, ""])
def test_ids_are_the_simulators(text: str) -> None:
    assert EstimateTokenizer().encode(text, special_tokens=True) == SimulatorTokenizer().encode(text)


def test_chat_is_rendered_with_the_simulators_template() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None},
    ]

    assert render_plain(messages) == "<|system|>\nBe brief.\n<|user|>\nHello there\n<|assistant|>\n\n<|assistant|>\n"
    assert render_plain(messages) == SimulatorTokenizer().render_chat(messages)
    tokens = EstimateTokenizer().tokenize_now(request(ApiKind.CHAT, messages=messages))
    assert tokens == SimulatorTokenizer().encode(SimulatorTokenizer().render_chat(messages))


def test_which_prompt_is_tokenized() -> None:
    tokenizer = make_tokenizer("estimate")
    encode = SimulatorTokenizer().encode

    assert tokenizer.tokenize_now(request(ApiKind.COMPLETIONS, prompt="abcdefgh")) == encode("abcdefgh")
    assert tokenizer.tokenize_now(request(ApiKind.COMPLETIONS, prompt=["first", "second"])) == encode("first")
    assert tokenizer.tokenize_now(request(ApiKind.COMPLETIONS, prompt=[7, 8, 9])) == [7, 8, 9]
    assert tokenizer.tokenize_now(request(ApiKind.COMPLETIONS, prompt=[[1, 2], [3]])) == [1, 2]


async def test_tokenize_is_the_same_awaited() -> None:
    tokenizer = EstimateTokenizer()
    body_request = request(ApiKind.COMPLETIONS, prompt="abcdefgh")

    assert await tokenizer.tokenize(body_request, []) == tokenizer.tokenize_now(body_request)
