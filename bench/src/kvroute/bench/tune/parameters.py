"""The numeric parameters worth searching, per plugin type: the table the default search space is built from.

Keys are the plugin `type` and the parameter's document (camelCase) name, as written under `parameters:` in an
`EndpointPickerConfig`. A plugin of the base configuration whose type is listed gets one dimension per listed
parameter, its range widened to include the base value (or the plugin's default when the base sets none). Add a
plugin type here to make its parameters tunable by default; `--space` files add or override ranges per plugin.
"""

from __future__ import annotations

from kvroute.bench.tune.ranges import Range

KNOWN_PARAMETERS: dict[str, dict[str, Range]] = {
    # In-flight uncached prompt tokens at which an endpoint scores 0: from a quarter step of 8k batched tokens
    # to many queued steps.
    "token-load-scorer": {"queueThresholdTokens": Range(2048, 262144, log=True, integer=True)},
    # Prefill blocks against decode blocks in the predicted cost.
    "active-blocks-scorer": {"overlapWeight": Range(0.25, 4.0, log=True)},
    # The charges of the predicted cost, in multiples of the request's own prefill time and of the KV wait. Its
    # `scoreScaleSeconds` is left out: against the other scorers it acts as this scorer's weight does.
    "predicted-latency-scorer": {
        "capacityCharge": Range(0.0, 4.0),
        "arrivalCharge": Range(0.0, 2.0),
        "kvWaitCharge": Range(0.0, 3.0),
    },
    "load-aware-scorer": {"threshold": Range(4, 512, log=True, integer=True)},
    "softmax-picker": {"temperature": Range(0.0, 1.0)},
    # Uncached prompt tokens from which a request is disaggregated.
    "pd-profile-handler": {"threshold": Range(choices=(0, 256, 1024, 4096))},
}
