"""Helpers shared by the Director and proxy tests: a recording hook plugin and the registry that knows it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from pydantic import BaseModel, ConfigDict

from kvroute.router.config.builder import Registry
from kvroute.router.framework import (
    CycleState,
    Endpoint,
    LLMRequest,
    PreparationFailed,
    Preparer,
    PreRequest,
    ResponseHook,
    ResponseInfo,
    SchedulingResult,
)
from kvroute.router.plugins.registry import REGISTRY


@dataclass
class Completion:
    request_id: str
    endpoint: str | None
    error: str | None
    status: int
    output_tokens: int


@dataclass
class Record:
    pre_request: list[str] = field(default_factory=list)
    headers: list[tuple[str, str, int]] = field(default_factory=list)  # request id, endpoint, status
    chunk_tokens: list[int] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)

    def completed(self, request_id: str) -> list[Completion]:
        return [c for c in self.completions if c.request_id == request_id]


class RecordingHook(PreRequest, ResponseHook):
    """Records every lifecycle call it receives; `fail` names extension points at which it raises."""

    type_name = "recording-hook"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        fail: tuple[str, ...] = ()
        client_header: str | None = None

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self.fail = params.fail
        self.client_header = params.client_header
        self.record = Record()

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        self.record.pre_request.append(request.request_id)
        if "pre_request" in self.fail:
            raise RuntimeError("pre_request failed on purpose")

    def on_response_headers(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint, response: ResponseInfo
    ) -> None:
        self.record.headers.append((request.request_id, endpoint.id, response.status))
        if self.client_header:
            response.client_headers[self.client_header] = endpoint.id

    def on_response_chunk(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint, response: ResponseInfo, new_tokens: int
    ) -> None:
        self.record.chunk_tokens.append(new_tokens)

    def on_response_complete(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint | None, response: ResponseInfo
    ) -> None:
        self.record.completions.append(
            Completion(
                request.request_id,
                endpoint.id if endpoint else None,
                response.error,
                response.status,
                response.output_tokens,
            )
        )
        if "complete" in self.fail:
            raise RuntimeError("on_response_complete failed on purpose")


class StubPreparer(Preparer):
    """Sets `token_ids` to `[number of candidates, prompt length]` after `delay` seconds, or fails as `fail` says
    ("failed": `PreparationFailed`, "bug": any other exception); records the request ids and whether it is closed."""

    type_name = "stub-preparer"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        fail: str = ""
        delay: float = 0.0

    def __init__(self, name: str, params: Params | None = None) -> None:
        params = params or self.Params()
        super().__init__(name, params)
        self.fail = params.fail
        self.delay = params.delay
        self.prepared: list[str] = []
        self.entered = asyncio.Event()  # set once a preparation has started
        self.closed = False

    async def prepare(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> None:
        self.prepared.append(request.request_id)
        self.entered.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail == "failed":
            raise PreparationFailed("the stub could not")
        if self.fail == "bug":
            raise RuntimeError("the stub is broken")
        request.token_ids = [len(endpoints), len(request.prompt)]

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def registry() -> Registry:
    """The real registry plus `recording-hook` and `stub-preparer`."""
    return {**REGISTRY, RecordingHook.type_name: RecordingHook, StubPreparer.type_name: StubPreparer}
