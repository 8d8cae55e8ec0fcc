"""Shared by the fleet tests: a configuration with the load scorers whose in-flight charges peers share."""

from __future__ import annotations

# kvroute's recommended configuration before the predicted-latency scorer replaced it (7bfdfd2^): the
# prefix-cache scorer and the router-side load scorers (`token-load-scorer`, `active-blocks-scorer`) are all
# FleetShared, which the tests that inspect those plugins' charges need.
LOAD_SCORERS_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: prefix-cache-scorer
  - type: no-hit-lru-scorer
  - type: lora-affinity-scorer
  - type: token-load-scorer
    parameters:
      queueThresholdTokens: 16384
  - type: active-blocks-scorer
  - type: queue-scorer
  - type: kv-cache-utilization-scorer
  - type: max-score-picker
    parameters:
      maxNumOfEndpoints: 3
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: prefix-cache-scorer, weight: 3}
      - {pluginRef: no-hit-lru-scorer, weight: 2}
      - {pluginRef: lora-affinity-scorer, weight: 3}
      - {pluginRef: token-load-scorer, weight: 2}
      - {pluginRef: active-blocks-scorer, weight: 1}
      - {pluginRef: queue-scorer, weight: 1}
      - {pluginRef: kv-cache-utilization-scorer, weight: 1}
      - {pluginRef: max-score-picker}
"""
