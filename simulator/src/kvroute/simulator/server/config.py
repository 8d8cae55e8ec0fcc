"""Everything one simulator server is started with (built by `kvroute sim serve` or directly by tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kvroute.simulator.engine.kv_events import KVCacheGroup
from kvroute.simulator.engine.profiles import DEFAULT_PROFILE, PROFILES, Profile

Role = Literal["both", "prefill", "decode"]

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    profile: Profile = field(default_factory=lambda: PROFILES[DEFAULT_PROFILE])
    model: str = DEFAULT_MODEL
    # Names the base model answers to; the first one labels the metrics (empty: `model`).
    served_model_names: tuple[str, ...] = ()
    lora_modules: tuple[str, ...] = ()
    role: Role = "both"
    time_scale: float = 1.0
    seed: int = 0
    default_max_tokens: int = 16
    global_cache_hit_threshold: float | None = None
    failure_injection_rate: float = 0.0
    failure_types: tuple[str, ...] = ()
    pod_name: str | None = None
    namespace: str = "default"
    kv_events_endpoint: str | None = None
    kv_events_connect: bool = False
    kv_events_map_format: bool = False
    max_body_bytes: int = MAX_BODY_BYTES
    # Engines behind the one port (vLLM --data-parallel-size): each its own cache, KV-events port (+rank) and
    # metric series (`engine="<rank>"`).
    data_parallel_size: int = 1
    # KV-cache groups of a hybrid model (empty: one group, published without group fields).
    kv_cache_groups: tuple[KVCacheGroup, ...] = ()

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.served_model_names or (self.model,)

    @property
    def served_model_name(self) -> str:
        return self.model_names[0]

    @property
    def pod(self) -> str:
        return self.pod_name or f"sim-{self.host}-{self.port}"

    @property
    def kv_events_topic(self) -> str:
        return f"kv@{self.host}:{self.port}@{self.served_model_name}"
