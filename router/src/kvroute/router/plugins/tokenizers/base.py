"""What a prompt tokenizer is, and which part of a request it tokenizes.

A tokenizer turns a request into the token ids the engine will run for its prompt:

- completions: the prompt string (`"prompt": "..."`, or the first of a list of strings: a batch is scheduled as
  one request and its first prompt is the one whose prefix counts), with the model's special tokens (BOS) as the
  engine adds them; token ids given as the prompt (`[1, 2, 3]`, or the first of a list of lists) are used as
  they are, by every tokenizer, without a call;
- chat: the messages rendered with the model's chat template (`chat`), followed by the generation prompt, then
  encoded without adding special tokens (the template writes them).

`tokenize` is what the precise scorer's `prepare` awaits; `tokenize_now` is the synchronous form that local
tokenizers offer, for callers that never await (a discrete-event benchmark calls the scheduler directly).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from kvroute.router.framework import ApiKind, Endpoint, LLMRequest, PreparationFailed


class TokenizeError(PreparationFailed):
    """The prompt could not be tokenized; the message says why."""


def given_token_ids(request: LLMRequest) -> list[int] | None:
    """The token ids of a completions prompt given as ids, else None."""
    if request.api is not ApiKind.COMPLETIONS:
        return None
    prompt = request.body.get("prompt")
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if _is_int(first):
            return list(prompt)
        if isinstance(first, list):
            return list(first)
    return None


def completion_text(request: LLMRequest) -> str:
    """The completions prompt to tokenize (the body was validated by the Director's parser)."""
    prompt = request.body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0]
    return prompt if isinstance(prompt, str) else request.prompt


def chat_messages(request: LLMRequest) -> list[dict[str, Any]]:
    messages = request.body.get("messages")
    return messages if isinstance(messages, list) else []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class PromptTokenizer(ABC):
    @abstractmethod
    async def tokenize(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[int]:
        """The prompt's token ids; `endpoints` are the request's candidates. Raises `TokenizeError`."""

    def tokenize_now(self, request: LLMRequest) -> list[int] | None:
        """The prompt's token ids computed without waiting, or None when that needs a network call. Raises
        `TokenizeError`."""
        return given_token_ids(request)

    async def close(self) -> None:  # noqa: B027 - optional: only a tokenizer holding connections has any
        """Releases connections; the tokenizer is not used afterwards."""


class LocalTokenizer(PromptTokenizer):
    """A tokenizer running in the router's process."""

    @abstractmethod
    def encode(self, text: str, *, special_tokens: bool) -> list[int]:
        """Token ids of `text`, with the model's special tokens around it when `special_tokens`."""

    @abstractmethod
    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The chat prompt text of `messages`, ending with the generation prompt."""

    async def load(self) -> None:
        """Makes `encode` ready without blocking the event loop (reading files, in a thread)."""

    async def tokenize(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[int]:
        await self.load()
        return self.tokenize_now(request)

    def tokenize_now(self, request: LLMRequest) -> list[int]:
        given = given_token_ids(request)
        if given is not None:
            return given
        if request.api is ApiKind.CHAT:
            return self.encode(self.render_chat(chat_messages(request)), special_tokens=False)
        return self.encode(completion_text(request), special_tokens=True)
