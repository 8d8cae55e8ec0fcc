"""A request inside the engine and what a step reports about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class FinishReason(StrEnum):
    LENGTH = "length"
    CACHE_THRESHOLD = "cache_threshold"
    ABORT = "abort"


@dataclass(slots=True)
class EngineRequest:
    """What the engine needs to know about one request (already tokenized)."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    arrival_time: float = 0.0
    lora_name: str | None = None
    cache_hit_threshold: float | None = None
    # vLLM P/D: {"do_remote_decode": true} on a prefill engine, {"do_remote_prefill": true, ...} on decode.
    kv_transfer_params: dict[str, Any] | None = None


@dataclass(slots=True)
class Sequence:
    """Engine-side state of a request."""

    request: EngineRequest
    block_hashes: list[int]
    blocks: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_output: int = 0
    num_cached_tokens: int = -1  # set when first scheduled
    num_registered: int = 0  # full blocks published to the prefix cache
    transfer_ready_at: float | None = None
    transferred: bool = False
    preempted: bool = False  # its cache-hit threshold is checked again when it rejoins
    scheduled_at: float | None = None
    first_token_at: float | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + self.num_output


@dataclass(slots=True)
class RequestOutput:
    """A step's news about one request, visible when the step ends."""

    request_id: str
    new_tokens: int
    num_output_tokens: int
    num_prompt_tokens: int
    num_cached_tokens: int
    finish_reason: FinishReason | None = None
    kv_transfer_params: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class StepResult:
    """The work of one engine iteration: it takes `duration` seconds; `outputs` become visible at its end."""

    duration: float
    outputs: list[RequestOutput]
    prefill_tokens: int = 0
    decode_seqs: int = 0
