"""The router configurations the overload benchmark compares: kvroute's recommended scoring, three admissions.

All three add a `concurrency-detector` (`maxConcurrency` = the engines' `max_num_seqs`: a request beyond the
running batch would only wait in the engine's queue) as the saturation detector, and give the objectives their
priorities: `critical` 100; `standard` 0 or -1 (sheddable) as below.

- `forward` (no flow control, `standard` 0): nothing is shed or queued; everything goes to the engines at once.
- `gie-shedding` (no flow control, `standard` -1): GIE's endpoint picker without flow control: a sheddable
  request is refused with 429 while the pool is saturated; critical requests always go through.
- `flow-control` (`flowControl:`, `standard` -1): requests wait in the router while the pool is saturated, the
  critical band first, round-robin between tenants inside a band, `defaultRequestTTL` `ttl_s`.
- `flow-control-holdback`: the same with a `priority-holdback-policy` (`minCeiling` `holdback`): the standard band
  may fill the pool only up to that share, so critical requests find room at once instead of waiting for a
  running request to end.
"""

from __future__ import annotations

from typing import Any

import yaml

from kvroute.bench.overload.scenario import CRITICAL, STANDARD
from kvroute.router.config.recommended import recommended_config_text

FORWARD = "forward"
GIE_SHEDDING = "gie-shedding"
FLOW_CONTROL = "flow-control"
HOLDBACK = "flow-control-holdback"
MODES = (FORWARD, GIE_SHEDDING, FLOW_CONTROL, HOLDBACK)
DETECTOR = "concurrency-detector"


def config_text(mode: str, max_concurrency: int, ttl_s: float, holdback: float = 0.7) -> str:
    """The configuration document of `mode` (YAML)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    document: dict[str, Any] = yaml.safe_load(recommended_config_text())
    document["plugins"].append({"type": DETECTOR, "parameters": {"maxConcurrency": max_concurrency}})
    document["saturationDetector"] = {"pluginRef": DETECTOR}
    objectives = {CRITICAL: 100, STANDARD: 0 if mode == FORWARD else -1}
    document["admission"] = {"objectives": objectives}
    if mode in (FLOW_CONTROL, HOLDBACK):
        document["flowControl"] = {"defaultRequestTTL": f"{ttl_s:g}s", "objectives": objectives}
    if mode == HOLDBACK:
        parameters = {"strategy": "stepwise-spread", "minCeiling": holdback}
        document["plugins"].append({"type": "priority-holdback-policy", "name": "holdback", "parameters": parameters})
        document["flowControl"]["usageLimitPolicyPluginRef"] = "holdback"
    return yaml.safe_dump(document, sort_keys=False)
