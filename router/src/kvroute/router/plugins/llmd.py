"""llm-d's plugin type names (llm-d Router, 2026) that kvroute loads, maps, or rejects with what to use instead.

The names kvroute shares with llm-d (`queue-scorer`, `prefix-cache-scorer`, `approx-prefix-cache-producer`,
`inflight-load-producer`, `prefix-cache-affinity-filter`, `decode-filter`, `max-score-picker`, ...) are registered
types of their own (`plugins.registry`). This table covers the rest:

P/D. llm-d's `disagg-profile-handler` runs the decode profile, then asks the decider named in `deciders.prefill`
whether to run the prefill profile. It loads as `pd-profile-handler`, whose threshold decider is the same rule:

    prefix-based-pd-decider {nonCachedTokens: N}, N > 0  ->  threshold: N
        (prefill when the decode endpoint's uncached prompt tokens >= N; llm-d counts prompt tokens as
        floor(chars / 4), kvroute as ceil(uncached chars / 4))
    always-disagg-pd-decider                            ->  threshold: 0

`profiles.decode` / `profiles.prefill` (or the older flat `decodeProfile` / `prefillProfile`) keep their names;
the decider reads the match info of the document's first `approx-prefix-cache-producer` (`prefixPluginName`),
as llm-d's reads its prefix producer's, else kvroute's default. The decider plugins themselves build nothing, and
neither do `prefill-header-handler` / `disagg-headers-handler`: `pd-profile-handler` sets
`x-prefiller-host-port` itself. What does not map is an error: no prefill decider or `nonCachedTokens: 0`
(llm-d then never disaggregates: use `single-profile-handler` on the decode profile), an encode stage.

Data layer. `metrics-data-source`, `core-metrics-extractor`, `endpoint-notification-source` and
`k8s-notification-source` build nothing: the router scrapes engine metrics itself (`metrics`) and discovers
endpoints from the InferencePool.

Everything else in `UNSUPPORTED` has no kvroute counterpart; loading a document that names one fails with the
plugin's path and the suggestion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvroute.router.config.aliases import Absorbed, Alias, AliasEntry, TranslationError, Unsupported
from kvroute.router.config.errors import format_path
from kvroute.router.config.models import EndpointPickerConfig

ORIGIN = "llm-d"
PD_HANDLER = "pd-profile-handler"
PREFIX_PRODUCER = "approx-prefix-cache-producer"

_NESTED = ("profiles", "deciders")
_FLAT = {
    "decodeProfile": "decode",
    "prefillProfile": "prefill",
    "encodeProfile": "encode",
    "prefillDeciderPluginName": "prefill",
    "deciderPluginName": "prefill",
    "encodeDeciderPluginName": "encode",
}
_SINGLE = "use single-profile-handler with the decode profile"


def _section(parameters: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = parameters.get(key) or {}
    if not isinstance(value, Mapping):
        raise TranslationError((key,), "expected a mapping")
    unknown = sorted(set(value) - {"decode", "prefill", "encode"})
    if unknown:
        raise TranslationError((key, unknown[0]), "unknown key; expected decode, prefill or encode")
    return value


def _threshold(decider: str, document: EndpointPickerConfig) -> int:
    """The `pd-profile-handler` threshold equivalent to the decider plugin named `decider`."""
    where = ("deciders", "prefill")
    for i, spec in enumerate(document.plugins):
        if spec.instance_name != decider:
            continue
        path = format_path(("plugins", i, "parameters"))
        parameters = spec.parameters or {}
        if spec.type == "always-disagg-pd-decider":
            return 0
        if spec.type != "prefix-based-pd-decider":
            raise TranslationError(
                where,
                f'plugin "{decider}" is a {spec.type}; kvroute maps prefix-based-pd-decider and '
                "always-disagg-pd-decider",
            )
        unknown = sorted(set(parameters) - {"nonCachedTokens"})
        if unknown:
            raise TranslationError(where, f"{path}.{unknown[0]}: unknown parameter of prefix-based-pd-decider")
        tokens = parameters.get("nonCachedTokens", 0)
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise TranslationError(where, f"{path}.nonCachedTokens: expected a whole number >= 0")
        if tokens == 0:
            raise TranslationError(
                where, f"{path}.nonCachedTokens: 0 turns disaggregation off in llm-d; {_SINGLE}, or set a threshold"
            )
        return tokens
    raise TranslationError(where, f'unknown plugin "{decider}"')


def disagg_profile_handler(parameters: Mapping[str, Any], document: EndpointPickerConfig) -> dict[str, Any]:
    """llm-d's `disagg-profile-handler` parameters as `pd-profile-handler`'s (module docstring)."""
    unknown = sorted(set(parameters) - {*_NESTED, *_FLAT})
    if unknown:
        raise TranslationError((unknown[0],), "unknown parameter of disagg-profile-handler")
    flat = [key for key in _FLAT if key in parameters]
    if flat and any(key in parameters for key in _NESTED):
        raise TranslationError((flat[0],), "cannot mix the flat parameters with profiles/deciders; use one format")
    profiles, deciders = dict(_section(parameters, "profiles")), dict(_section(parameters, "deciders"))
    for key in reversed(flat):  # the first of two flat names for one decider wins, as in llm-d
        target = profiles if key.endswith("Profile") else deciders
        target[_FLAT[key]] = parameters[key]
    if deciders.get("encode") or "encode" in profiles:
        raise TranslationError(("deciders", "encode"), "kvroute has no encode stage (E/P/D); remove it")
    decider = deciders.get("prefill")
    if not decider:
        raise TranslationError(
            ("deciders", "prefill"), f"without a prefill decider llm-d never disaggregates; {_SINGLE}"
        )
    translated: dict[str, Any] = {
        "threshold": _threshold(str(decider), document),
        "decodeProfile": profiles.get("decode", "decode"),
        "prefillProfile": profiles.get("prefill", "prefill"),
    }
    producer = next((spec.instance_name for spec in document.plugins if spec.type == PREFIX_PRODUCER), None)
    if producer is not None:
        translated["prefixPluginName"] = producer
    return translated


_PD_HEADER = f"{PD_HANDLER} (it sets x-prefiller-host-port itself)"
_PD_DECIDER = f"{PD_HANDLER} (disagg-profile-handler's decider becomes its threshold)"
_DATA_LAYER = "the router's own metrics scraping and endpoint discovery (the `metrics` section)"
_PREDICTED = "use predicted-latency-scorer (docs/predicted-latency.md)"
_ADMISSION = "set request priorities in `admission` and the shedding threshold in `saturationDetector`"
_NO_ENCODE = "kvroute has no encode stage (E/P/D)"

UNSUPPORTED: dict[str, str] = {
    "precise-prefix-cache-producer": "use precise-prefix-cache-scorer with kvEvents (docs/precise-prefix.md)",
    "token-producer": "tokenization is a parameter of precise-prefix-cache-scorer (`tokenizer`)",
    "burst-prefix-cache-producer": "no-hit-lru-scorer spreads new prefix groups",
    "session-affinity-filter": "use session-affinity-scorer (header x-session-token) with a high weight",
    "session-id-producer": "use session-affinity-scorer (header x-session-token)",
    "context-length-aware": "use label-selector-filter on a context-length label",
    "utilization-filter": "use kv-cache-utilization-scorer and queue-scorer, or the saturationDetector thresholds",
    "encode-filter": _NO_ENCODE,
    "always-disagg-multimodal-decider": _NO_ENCODE,
    "data-parallel-profile-handler": "endpoints are one per pod and target port already; use single-profile-handler",
    "header-profile-handler": "use single-profile-handler, or pd-profile-handler for P/D",
    "predicted-latency-producer": _PREDICTED,
    "latency-scorer": _PREDICTED,
    "slo-headroom-tier-filter": _PREDICTED,
    "latency-slo-admitter": _ADMISSION,
    "probabilistic-admitter": _ADMISSION,
}

ALIASES: dict[str, AliasEntry] = {
    "disagg-profile-handler": Alias(PD_HANDLER, ORIGIN, disagg_profile_handler),
    "prefix-based-pd-decider": Absorbed(_PD_DECIDER, ORIGIN),
    "always-disagg-pd-decider": Absorbed(_PD_DECIDER, ORIGIN),
    "prefill-header-handler": Absorbed(_PD_HEADER, ORIGIN),
    "disagg-headers-handler": Absorbed(_PD_HEADER, ORIGIN),
    "metrics-data-source": Absorbed(_DATA_LAYER, ORIGIN),
    "core-metrics-extractor": Absorbed(_DATA_LAYER, ORIGIN),
    "endpoint-notification-source": Absorbed(_DATA_LAYER, ORIGIN),
    "k8s-notification-source": Absorbed(_DATA_LAYER, ORIGIN),
    **{name: Unsupported(instead, ORIGIN) for name, instead in UNSUPPORTED.items()},
}
