"""Chat prompts as text: a model's Jinja chat template, or kvroute's plain template when the model has none.

A template from a Hugging Face `tokenizer_config.json` (`chat_template`: a string, or a list of named templates of
which "default" is taken) is rendered the way `transformers` renders it: a sandboxed Jinja environment with
`trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that keeps non-ASCII
characters, the globals `raise_exception` and `strftime_now`, and the variables `messages`,
`add_generation_prompt` (true: the prompt ends where the assistant's answer starts), `bos_token` and `eos_token`.

The plain template (`render_plain`), used when there is no chat template, is the one kvroute's simulator uses:

    <|{role}|>\\n{content}\\n      for each message, then      <|assistant|>\\n

where `content` is the message's text (a string, or the concatenated `text` of a list of content parts).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A chat template that cannot be compiled or rendered."""


def content_text(content: Any) -> str:
    """OpenAI message content (a string, None, or a list of parts) as text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return str(content)


def render_plain(messages: list[dict[str, Any]]) -> str:
    parts = [f"<|{message.get('role', '')}|>\n{content_text(message.get('content'))}\n" for message in messages]
    parts.append("<|assistant|>\n")
    return "".join(parts)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _token_text(token: Any) -> str | None:
    """A special token of `tokenizer_config.json`: a string, or an object with its `content`."""
    if isinstance(token, str):
        return token
    if isinstance(token, Mapping) and isinstance(token.get("content"), str):
        return str(token["content"])
    return None


class ChatTemplate:
    """A model's chat template, compiled once."""

    def __init__(self, source: str, *, bos_token: str | None = None, eos_token: str | None = None) -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        try:
            self._template = environment.from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"invalid chat template: {exc}") from None
        self._bos = bos_token or ""
        self._eos = eos_token or ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ChatTemplate | None:
        """The template of a parsed `tokenizer_config.json`, None when it has none."""
        source = config.get("chat_template")
        if isinstance(source, list):
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, Mapping)}
            source = named.get("default")
        if not isinstance(source, str) or not source:
            return None
        bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
        return cls(source, bos_token=bos, eos_token=eos)

    def render(self, messages: list[dict[str, Any]]) -> str:
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=True, bos_token=self._bos, eos_token=self._eos
            )
        except TemplateError as exc:
            raise ChatTemplateError(f"the chat template failed: {exc}") from None
