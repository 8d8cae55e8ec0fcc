"""Deterministic stand-in tokenizer: one token per 4 characters, a fixed chat template.

Token ids are `crc32(chunk) mod VOCAB_SIZE` over consecutive 4-character chunks, so tokenization is
prefix-stable: two texts sharing their first 4k characters share their first k tokens, which is what prefix
caching (and a router's character-based prefix estimate) relies on. The same text always gives the same ids,
in every process.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

CHARS_PER_TOKEN = 4
VOCAB_SIZE = 128_000

# A few words used to synthesise output text; each is one token wide.
_OUTPUT_WORDS = ("the ", "and ", "cat ", "sat ", "on a", " mat", " in ", "sun.", "kv  ", "hit ")


class Tokenizer:
    """Encodes text to token ids; renders chat messages with a fixed template."""

    def encode(self, text: str) -> list[int]:
        crc = zlib.crc32
        return [
            crc(text[i : i + CHARS_PER_TOKEN].encode("utf-8", "surrogatepass")) % VOCAB_SIZE
            for i in range(0, len(text), CHARS_PER_TOKEN)
        ]

    def count(self, text: str) -> int:
        return -(-len(text) // CHARS_PER_TOKEN)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """`<|role|>\\ncontent\\n` per message, then `<|assistant|>\\n` to prompt the answer.

        Content may be a string or a list of `{"type": "text", "text": ...}` parts (OpenAI format).
        """
        parts = [f"<|{message['role']}|>\n{content_text(message.get('content'))}\n" for message in messages]
        if add_generation_prompt:
            parts.append("<|assistant|>\n")
        return "".join(parts)

    def output_text(self, seed: int, index: int) -> str:
        """The text of output token `index` for a request seeded with `seed` (deterministic)."""
        return _OUTPUT_WORDS[(seed + index * 7) % len(_OUTPUT_WORDS)]


def content_text(content: Any) -> str:
    """Flatten OpenAI message content (string, None, or a list of text parts) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
