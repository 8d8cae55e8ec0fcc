"""The policies that kvroute's configuration language expresses, as configuration documents.

Each is a scoring recipe (weighted scorers and a picker) rendered into an `EndpointPickerConfig`:

- one `default` profile on an aggregated fleet;
- on a P/D fleet, llm-d's disaggregated layout: a `decode` profile (`decode-filter` + the recipe) and a
  `prefill` profile (`prefill-filter` + the recipe), chosen by `pd-profile-handler` with threshold 0, so every
  request is disaggregated. The scorers (and their state) are shared by both profiles; each has its own picker.

GIE's default is the router's own built-in document; kvroute's is the shipped recommended one
(`kvroute.router.config.recommended`), so what is benchmarked is exactly what users get.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT


@dataclass(frozen=True)
class Recipe:
    scorers: tuple[tuple[str, float], ...]  # (plugin type, weight)
    picker: str = "max-score-picker"

    def document(self, *, disaggregated: bool) -> str:
        scorers: list[dict[str, Any]] = [{"type": t} for t, _ in self.scorers]
        refs: list[dict[str, Any]] = [{"pluginRef": t, "weight": w} for t, w in self.scorers]
        if not disaggregated:
            plugins = [*scorers, {"type": self.picker}]
            profiles = [{"name": "default", "plugins": [*refs, {"pluginRef": self.picker}]}]
        else:
            # One picker per profile: a shared round-robin cursor would advance twice per request and, with
            # pools of even size, visit only every other endpoint of each pool.
            plugins = [{"type": "decode-filter"}, {"type": "prefill-filter"}, *scorers]
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


# The precise scorer as the harness runs it: events arrive through `on_kv_events` (no socket is opened, the
# subscription is never started), prompts are tokenized like the simulator does.
PRECISE_PARAMETERS: dict[str, Any] = {"kvEvents": {"endpointPort": 5557}, "tokenizer": "estimate"}


def with_precise_prefix(document: str) -> str:
    """`document` with its approximate `prefix-cache-scorer` replaced by `precise-prefix-cache-scorer` under the
    same name, so the plugins that read its match info (no-hit-lru, token-load, active-blocks, P/D) still do."""
    parsed = yaml.safe_load(document)
    for plugin in parsed["plugins"]:
        if plugin["type"] == "prefix-cache-scorer":
            plugin["name"] = plugin.get("name", plugin["type"])
            plugin["type"] = "precise-prefix-cache-scorer"
            plugin["parameters"] = dict(PRECISE_PARAMETERS)
    return yaml.safe_dump(parsed, sort_keys=False)


def gie_default_document(*, disaggregated: bool) -> str:
    return GIE_DEFAULT.document(disaggregated=True) if disaggregated else DEFAULT_CONFIG_TEXT
