"""The parameters of `precise-prefix-cache-scorer`, validated with errors that say what to write instead."""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import BeforeValidator, Field, field_validator, model_validator

from kvroute.router.config.models import parse_duration
from kvroute.router.framework import KVEventsSubscription
from kvroute.router.plugins.params import PluginParams
from kvroute.router.plugins.prefix.hashing import DEFAULT_BLOCK_SIZE_TOKENS, DEFAULT_MAX_BLOCKS
from kvroute.router.plugins.prefix.precise_index import DEFAULT_MAX_ENTRIES
from kvroute.router.plugins.tokenizers import TokenizerKind

_TCP = re.compile(r"^tcp://(\*|[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")


def _seconds(value: object) -> object:
    """A number is taken as seconds; anything else must be a Go duration string."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return parse_duration(value)


def _seconds_or_zero(value: object) -> object:
    """As `_seconds`, and "0" (or "0s") means off."""
    if value in ("0", "0s"):
        return 0.0
    return _seconds(value)


def check_zmq_endpoint(value: str) -> str:
    """`tcp://<host or *>:<port>` (port 1-65535) or `ipc://<path>`; raises `ValueError` naming the problem."""
    match = _TCP.match(value)
    if match is not None and 1 <= int(match.group(2)) <= 65535:
        return value
    if value.startswith("ipc://") and len(value) > len("ipc://"):
        return value
    raise ValueError(
        f'invalid ZMQ endpoint "{value}": expected tcp://<host>:<port> (e.g. tcp://*:5557) or ipc://<path>'
    )


class KVEventsParams(PluginParams):
    """Where the KV events come from: `bind` (central) or `endpointPort` (one connection per endpoint)."""

    bind: str | None = Field(
        default=None, description="ZMQ endpoint the router binds, every engine connecting to it (tcp://*:5557)."
    )
    endpoint_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of each endpoint's publisher: the router connects to tcp://<endpoint address>:<port>.",
    )
    topic_filter: str = Field(default="kv@", description="Topic prefix subscribed to.")
    data_parallel_size: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Data-parallel ranks per endpoint (vLLM --data-parallel-size): rank r publishes on port + r.",
    )

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str | None) -> str | None:
        return None if value is None else check_zmq_endpoint(value)

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        if self.bind is not None and self.endpoint_port is not None:
            raise ValueError(
                "set bind (the router binds, engines connect) or endpointPort (the router connects to "
                "every endpoint), not both"
            )
        if self.bind is None and self.endpoint_port is None:
            raise ValueError(
                "set bind (e.g. tcp://*:5557: the router binds, engines connect) or endpointPort (e.g. "
                "5557: the router connects to every endpoint)"
            )
        match = _TCP.match(self.bind or "")
        port = int(match.group(2)) if match is not None else self.endpoint_port
        if port is not None and port + self.data_parallel_size - 1 > 65535:
            raise ValueError(
                f"dataParallelSize {self.data_parallel_size} needs ports {port}..{port + self.data_parallel_size - 1}"
                ", past 65535"
            )
        return self

    def subscription(self) -> KVEventsSubscription:
        return KVEventsSubscription(
            bind=self.bind,
            endpoint_port=self.endpoint_port,
            topic_filter=self.topic_filter,
            data_parallel_size=self.data_parallel_size,
        )


class PrecisePrefixParams(PluginParams):
    kv_events: KVEventsParams = Field(description="How the engines' KV events reach the router.")
    block_size_tokens: int = Field(
        default=DEFAULT_BLOCK_SIZE_TOKENS,
        ge=1,
        description="Tokens per block, for endpoints whose events and metrics have not told theirs.",
    )
    max_prefix_blocks_to_match: int = Field(default=DEFAULT_MAX_BLOCKS, ge=1, description="Blocks matched at most.")
    lru_capacity_per_endpoint: int | None = Field(
        default=None,
        ge=1,
        description="Engine blocks remembered per endpoint; default twice its num_gpu_blocks, else 131072.",
    )
    max_entries: int = Field(default=DEFAULT_MAX_ENTRIES, ge=1, description="Entries remembered for all endpoints.")
    speculative_ttl: Annotated[float, BeforeValidator(_seconds_or_zero)] = Field(
        default=2.0,
        ge=0.0,
        alias="speculativeTTL",
        description="How long a routed prompt counts as cached on its target before events confirm it; 0: off.",
    )
    tokenizer: TokenizerKind = Field(default="estimate", description="estimate, hf or engine.")
    tokenizer_path: str | None = Field(default=None, min_length=1, description="hf: the model's tokenizer.json.")
    tokenize_timeout: Annotated[float, BeforeValidator(_seconds)] = Field(
        default=1.0, gt=0.0, description="engine: bound of the /tokenize calls."
    )

    @model_validator(mode="after")
    def _tokenizer_path(self) -> Self:
        if self.tokenizer == "hf" and self.tokenizer_path is None:
            raise ValueError("tokenizer hf needs tokenizerPath (the model's tokenizer.json)")
        if self.tokenizer != "hf" and self.tokenizer_path is not None:
            raise ValueError(f"tokenizerPath is only for tokenizer hf, not {self.tokenizer}")
        return self
