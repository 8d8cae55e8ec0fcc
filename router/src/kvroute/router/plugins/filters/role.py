"""`decode-filter` and `prefill-filter`: keep the endpoints that can serve one phase of a disaggregated request.

The role comes from `Endpoint.role`, which the data layer reads from the pod label `llm-d.ai/role`:
`decode`, `prefill`, or `both` (also for `prefill-decode` / `encode-prefill-decode`, for an unknown value, and for
a pod without the label).

- `decode-filter` keeps roles `decode` and `both`, so unlabeled pods serve decode.
- `prefill-filter` keeps role `prefill` only: a prefill profile runs on dedicated prefill pods.

No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvroute.router.framework import CycleState, Endpoint, Filter, LLMRequest, Role


class DecodeFilter(Filter):
    type_name = "decode-filter"

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.role in (Role.DECODE, Role.BOTH)]


class PrefillFilter(Filter):
    type_name = "prefill-filter"

    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.role is Role.PREFILL]
