"""`hf`: the model's own Hugging Face tokenizer, from a local `tokenizer.json` (the `tokenizers` library).

`path` is the `tokenizer.json` file, or a directory holding it. A `tokenizer_config.json` in the same directory
gives the chat template and the BOS/EOS tokens it writes (`chat.ChatTemplate`); without one, or without a
`chat_template` in it, chat messages are rendered with kvroute's plain template (`chat.render_plain`), which
matches no real model's: point `path` at the model's files (those vLLM loads) for chat traffic.

Completions are encoded with the tokenizer's post-processor (`add_special_tokens`, e.g. Llama's BOS), as vLLM
does; a rendered chat prompt without it, since the template writes the special tokens itself.

The files are read at the first use, not when the configuration is loaded (the configuration may be validated
where the files are not, e.g. by the operator): in a thread when called from `tokenize`, synchronously from
`tokenize_now`. A failure to read them fails that request's tokenization, and reading is tried again at most
every `RETRY_S` seconds.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import tokenizers

from kvroute.router.plugins.tokenizers.base import LocalTokenizer, TokenizeError
from kvroute.router.plugins.tokenizers.chat import ChatTemplate, ChatTemplateError, render_plain

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
RETRY_S = 30.0


class HFTokenizer(LocalTokenizer):
    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._tokenizer: tokenizers.Tokenizer | None = None
        self._template: ChatTemplate | None = None
        self._failure: tuple[float, str] | None = None  # when the last load failed, and why
        self._lock = threading.Lock()

    async def load(self) -> None:
        if self._tokenizer is None:
            await asyncio.to_thread(self._loaded)

    def encode(self, text: str, *, special_tokens: bool) -> list[int]:
        return list(self._loaded().encode(text, add_special_tokens=special_tokens).ids)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        self._loaded()
        if self._template is None:
            return render_plain(messages)
        try:
            return self._template.render(messages)
        except ChatTemplateError as exc:
            raise TokenizeError(str(exc)) from None

    def _loaded(self) -> tokenizers.Tokenizer:
        loaded = self._tokenizer
        if loaded is not None:
            return loaded
        with self._lock:
            if self._tokenizer is not None:
                return self._tokenizer
            failure = self._failure
            if failure is not None and time.monotonic() - failure[0] < RETRY_S:
                raise TokenizeError(failure[1])
            file = self._path / TOKENIZER_FILE if self._path.is_dir() else self._path
            try:
                loaded = tokenizers.Tokenizer.from_file(str(file))
                self._template = self._read_template(file.parent / CONFIG_FILE)
            except Exception as exc:  # the library raises plain Exceptions for files it cannot parse
                reason = f"cannot load the tokenizer {file}: {exc}"
                self._failure = (time.monotonic(), reason)
                raise TokenizeError(reason) from None
            self._tokenizer = loaded
            return loaded

    @staticmethod
    def _read_template(config_file: Path) -> ChatTemplate | None:
        if not config_file.is_file():
            return None
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"{config_file} is not a JSON object")
        return ChatTemplate.from_config(config)
