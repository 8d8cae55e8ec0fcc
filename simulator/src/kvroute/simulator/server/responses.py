"""Response bodies and server-sent-event chunks, shaped as vLLM's OpenAI-compatible server writes them."""

from __future__ import annotations

import json
from typing import Any

from kvroute.simulator.server.protocol import ModelCatalog

SSE_DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


class ResponseRenderer:
    """Renders one request's answer: a whole completion, or its stream of chunks."""

    def __init__(self, *, chat: bool, request_id: str, model: str, created: int) -> None:
        self.chat = chat
        self._head: dict[str, Any] = {
            "id": request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }

    def full(
        self,
        text: str,
        finish_reason: str,
        usage: dict[str, Any],
        kv_transfer_params: dict[str, Any] | None,
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=finish_reason, stop_reason=None)
        body = {**self._head, "object": "chat.completion" if self.chat else "text_completion"}
        body.update(choices=[choice], usage=usage)
        if kv_transfer_params is not None:
            body["kv_transfer_params"] = kv_transfer_params
        return body

    def role_chunk(self) -> dict[str, Any]:
        """A chat stream opens with the assistant role and empty content, just ahead of the first token."""
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return {**self._head, "choices": [choice]}

    def chunk(
        self, text: str, finish_reason: str | None, kv_transfer_params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = {"content": text} if text else {}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=finish_reason)
        if finish_reason is not None:
            choice["stop_reason"] = None
        body = {**self._head, "choices": [choice]}
        if kv_transfer_params is not None:
            body["kv_transfer_params"] = kv_transfer_params
        return body

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self._head, "choices": [], "usage": usage}


def model_list(catalog: ModelCatalog, root: str, created: int) -> dict[str, Any]:
    """`GET /v1/models`: every served name of the base model, then every LoRA adapter."""

    def card(model_id: str, model_root: str, parent: str | None) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": created,
            "owned_by": "kvroute",
            "root": model_root,
            "parent": parent,
            "max_model_len": catalog.max_model_len,
        }

    cards = [card(name, root, None) for name in catalog.served_names]
    cards += [card(name, path, catalog.default) for name, path in catalog.loras.items()]
    return {"object": "list", "data": cards}
