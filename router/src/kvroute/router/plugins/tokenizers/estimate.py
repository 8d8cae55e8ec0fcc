"""`estimate`: kvroute's stand-in tokenization, one token per four characters.

    ids = [crc32(utf8(text[i : i + 4])) mod 128000  for i = 0, 4, 8, ...]

Chat messages are rendered with the plain template (`chat.render_plain`). This is exactly what kvroute's simulator
runs, so against simulators the router's keys match the engines'. Against a real model server they do not: its
tokenizer differs, no key ever matches and every endpoint scores 0. Use `hf` or `engine` there.
"""

from __future__ import annotations

import zlib
from typing import Any

from kvroute.router.plugins.tokenizers.base import LocalTokenizer
from kvroute.router.plugins.tokenizers.chat import render_plain

CHARS_PER_TOKEN = 4
VOCAB_SIZE = 128_000


class EstimateTokenizer(LocalTokenizer):
    def encode(self, text: str, *, special_tokens: bool) -> list[int]:
        crc = zlib.crc32
        if text.isascii():
            data = text.encode("ascii")
            return [crc(data[i : i + CHARS_PER_TOKEN]) % VOCAB_SIZE for i in range(0, len(data), CHARS_PER_TOKEN)]
        return [
            crc(text[i : i + CHARS_PER_TOKEN].encode("utf-8", "surrogatepass")) % VOCAB_SIZE
            for i in range(0, len(text), CHARS_PER_TOKEN)
        ]

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        return render_plain(messages)
