"""`lora-affinity-scorer`: prefer endpoints that already hold the requested LoRA adapter.

The request's `model` names the adapter. From each endpoint's last scrape (`lora.running`, `lora.waiting`,
`lora.max_loras`):

    1.0  the adapter is running (loaded) on the endpoint
    0.8  otherwise, the endpoint has a free adapter slot: len(running) + len(waiting) < max_loras
    0.6  otherwise, the adapter is waiting to be loaded on the endpoint
    0.0  otherwise

Base-model requests: a model that appears in no endpoint's running or waiting adapter list is taken to be the
base model, which every endpoint serves, so every endpoint scores 1.0. A side effect worth knowing: an adapter
that no endpoint has loaded or queued yet is indistinguishable from the base model and also scores 1.0
everywhere (the free-slot preference applies only once some endpoint lists the adapter). No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, LoraInfo, Scorer

RUNNING_SCORE = 1.0
FREE_SLOT_SCORE = 0.8
WAITING_SCORE = 0.6


class LoraAffinityScorer(Scorer):
    type_name = "lora-affinity-scorer"

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        adapter = request.model
        for endpoint in endpoints:
            lora = endpoint.metrics.lora
            if adapter in lora.running or adapter in lora.waiting:
                return {e.id: _adapter_score(adapter, e.metrics.lora) for e in endpoints}
        return dict.fromkeys([e.id for e in endpoints], 1.0)  # the base model


def _adapter_score(adapter: str, lora: LoraInfo) -> float:
    if adapter in lora.running:
        return RUNNING_SCORE
    if len(lora.running) + len(lora.waiting) < lora.max_loras:
        return FREE_SLOT_SCORE
    if adapter in lora.waiting:
        return WAITING_SCORE
    return 0.0
