"""The request as the scheduler sees it, and what is known of its response."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ApiKind(StrEnum):
    COMPLETIONS = "completions"
    CHAT = "chat"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"


@dataclass(slots=True)
class LLMRequest:
    request_id: str
    model: str
    api: ApiKind
    prompt: str  # text hashed for prefix affinity: the prompt, or a canonical serialisation of chat messages
    body: dict[str, Any]
    headers: Mapping[str, str]
    priority: int = 0
    stream: bool = False
    cache_hit_threshold: float | None = None
    objective: str | None = None  # x-gateway-inference-objective
    # The prompt's token ids, when a `Preparer` (or the front door) computed them; scorers that need exact token
    # ids read them here. None: not known.
    token_ids: list[int] | None = None


@dataclass(slots=True)
class ResponseInfo:
    """Accumulated while the response streams; read by response hooks."""

    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    # Headers a hook wants added to the client's response (e.g. a session token); front doors send them.
    client_headers: dict[str, str] = field(default_factory=dict)
