"""The policies that kvroute's configuration language expresses, as configuration documents.

Each is a scoring recipe (weighted scorers and a picker; optionally filters, data producers and plugin
parameters) rendered into an `EndpointPickerConfig`:

- one `default` profile on an aggregated fleet;
- on a P/D fleet, llm-d's disaggregated layout: a `decode` profile (`decode-filter` + the recipe) and a
  `prefill` profile (`prefill-filter` + the recipe), chosen by `pd-profile-handler` with threshold 0, so every
  request is disaggregated. The filters, scorers and producers (and their state) are shared by both profiles;
  each has its own picker.

GIE's default is the router's own built-in document; kvroute's is the shipped recommended one
(`kvroute.router.config.recommended`), so what is benchmarked is exactly what users get.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT


@dataclass(frozen=True)
class Recipe:
    scorers: tuple[tuple[str, float], ...]  # (plugin type, weight)
    picker: str = "max-score-picker"
    filters: tuple[str, ...] = ()  # plugin types, in profile order (after the role filter on a P/D fleet)
    producers: tuple[str, ...] = ()  # data producers: configured, in no profile
    parameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by plugin type

    def _plugin(self, type_name: str) -> dict[str, Any]:
        parameters = self.parameters.get(type_name)
        return {"type": type_name} if parameters is None else {"type": type_name, "parameters": dict(parameters)}

    def document(self, *, disaggregated: bool) -> str:
        configured = [self._plugin(t) for t in (*self.producers, *self.filters, *(t for t, _ in self.scorers))]
        refs: list[dict[str, Any]] = [{"pluginRef": t} for t in self.filters]
        refs += [{"pluginRef": t, "weight": w} for t, w in self.scorers]
        if not disaggregated:
            plugins = [*configured, {"type": self.picker}]
            profiles = [{"name": "default", "plugins": [*refs, {"pluginRef": self.picker}]}]
        else:
            # One picker per profile: a shared round-robin cursor would advance twice per request and, with
            # pools of even size, visit only every other endpoint of each pool.
            plugins = [{"type": "decode-filter"}, {"type": "prefill-filter"}, *configured]
            plugins += [{"name": f"{role}-picker", "type": self.picker} for role in ("decode", "prefill")]
            plugins.append({"type": "pd-profile-handler", "parameters": {"threshold": 0}})
            profiles = [
                {"name": role, "plugins": [{"pluginRef": f"{role}-filter"}, *refs, {"pluginRef": f"{role}-picker"}]}
                for role in ("decode", "prefill")
            ]
        document = {
            "apiVersion": "kvroute.io/v1alpha1",
            "kind": "EndpointPickerConfig",
            "plugins": plugins,
            "schedulingProfiles": profiles,
        }
        return yaml.safe_dump(document, sort_keys=False)


RANDOM = Recipe((), picker="random-picker")
ROUND_ROBIN = Recipe((), picker="round-robin-picker")
# Fewest waiting requests, then fewest running ones, from the scraped metrics.
LEAST_QUEUE = Recipe((("queue-scorer", 1.0), ("running-requests-size-scorer", 1.0)))
GIE_DEFAULT = Recipe((("queue-scorer", 2.0), ("kv-cache-utilization-scorer", 2.0), ("prefix-cache-scorer", 3.0)))
# llm-d's "legacy blend" (reference/llmd.md, 5(d)).
LLMD_BLEND = Recipe(
    (
        ("prefix-cache-scorer", 3.0),
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("no-hit-lru-scorer", 2.0),
    )
)
# llm-d's "precise" configuration of its 73%-capacity benchmark (reference/llmd.md, 5(a)).
# Its precise scorer is written as `prefix-cache-scorer` and swapped for the precise one (`with_precise_prefix`).
LLMD_PRECISE = Recipe((("prefix-cache-scorer", 3.0), ("kv-cache-utilization-scorer", 2.0), ("queue-scorer", 2.0)))
# llm-d's 2026 optimized baseline (llm-d/llm-d guides/optimized-baseline/router/optimized-baseline.values.yaml):
# sticky to endpoints holding >= 80% of the prompt until the best of them has 286,720 more uncached tokens in
# flight than the least loaded other endpoint, then the fewest uncached tokens in flight (this request's own
# included), max-score picker.
LLMD_OPTIMIZED = Recipe(
    (("token-load-scorer", 1.0),),
    filters=("prefix-cache-affinity-filter",),
    producers=("inflight-load-producer", "approx-prefix-cache-producer"),
    parameters={
        "approx-prefix-cache-producer": {"maxPrefixTokensToMatch": 40960},
        "prefix-cache-affinity-filter": {
            "affinityThreshold": 0.80,
            "maxTokensInFlightPenalty": 286720,
            "maxTTFTPenaltyMs": 0,
        },
    },
)


# The precise scorer as the harness runs it: events arrive through `on_kv_events` (no socket is opened, the
# subscription is never started), prompts are tokenized like the simulator does.
PRECISE_PARAMETERS: dict[str, Any] = {"kvEvents": {"endpointPort": 5557}, "tokenizer": "estimate"}


def with_precise_prefix(document: str) -> str:
    """`document` with its approximate prefix plugin (`prefix-cache-scorer` or `approx-prefix-cache-producer`)
    replaced by `precise-prefix-cache-scorer` under the same name, so the plugins that read its match info
    (no-hit-lru, token-load, active-blocks, predicted-latency, P/D) still do. A producer becomes a scorer of weight 0
    in every profile: a scorer publishes its match info only where it runs. Its match length is kept."""
    parsed = yaml.safe_load(document)
    for plugin in parsed["plugins"]:
        if plugin["type"] not in ("prefix-cache-scorer", "approx-prefix-cache-producer"):
            continue
        name = plugin["name"] = plugin.get("name", plugin["type"])
        parameters = dict(PRECISE_PARAMETERS)
        kept = plugin.get("parameters") or {}
        if "maxPrefixBlocksToMatch" in kept:
            # The same length in the engine's 16-token blocks the precise index keys.
            tokens = kept["maxPrefixBlocksToMatch"] * kept.get("blockSizeTokens", 16)
            parameters["maxPrefixBlocksToMatch"] = tokens // 16
        if plugin["type"] == "approx-prefix-cache-producer":
            for profile in parsed["schedulingProfiles"]:
                profile["plugins"].insert(0, {"pluginRef": name, "weight": 0})
        plugin["type"] = "precise-prefix-cache-scorer"
        plugin["parameters"] = parameters
    return yaml.safe_dump(parsed, sort_keys=False)


def gie_default_document(*, disaggregated: bool) -> str:
    return GIE_DEFAULT.document(disaggregated=True) if disaggregated else DEFAULT_CONFIG_TEXT
