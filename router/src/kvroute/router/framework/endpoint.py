"""An endpoint (one model-server pod x target port) and the metrics last scraped from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

ROLE_LABEL = "llm-d.ai/role"


class Role(StrEnum):
    DECODE = "decode"
    PREFILL = "prefill"
    BOTH = "both"

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> Role:
        value = labels.get(ROLE_LABEL, "both")
        if value in ("prefill-decode", "encode-prefill-decode"):
            return cls.BOTH
        try:
            return cls(value)
        except ValueError:
            return cls.BOTH


@dataclass(frozen=True, slots=True)
class LoraInfo:
    max_loras: int = 0
    running: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    """One scrape; `stale` is set by the data layer when the scrape is older than its threshold or failed."""

    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    lora: LoraInfo = LoraInfo()
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    scraped_at: float = 0.0
    stale: bool = True


@dataclass(eq=False, slots=True)
class Endpoint:
    """Identity is `id` (`ip:port`); `metrics` is replaced (never mutated) by the scraper."""

    id: str
    address: str
    port: int
    pod_name: str = ""
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    role: Role = Role.BOTH
    metrics: EndpointMetrics = EndpointMetrics()

    @classmethod
    def create(
        cls,
        address: str,
        port: int,
        *,
        pod_name: str = "",
        namespace: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Endpoint:
        frozen = MappingProxyType(dict(labels or {}))
        return cls(
            id=f"{address}:{port}",
            address=address,
            port=port,
            pod_name=pod_name or f"{address}:{port}",
            namespace=namespace,
            labels=frozen,
            role=Role.from_labels(frozen),
        )

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Endpoint) and other.id == self.id
