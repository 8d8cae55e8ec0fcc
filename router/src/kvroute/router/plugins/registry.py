"""Every plugin type the router can instantiate from config, by type name.

The one place a type name is bound to a class: the config loader looks types up here and nowhere else, and
importing this module registers nothing as a side effect. Each key equals its class's `type_name`; the older
label-filter names `by-label` and `by-label-selector` are classes of their own (see `filters.label_selector`).
The other llm-d names are aliases the config builder maps (`plugins.llmd`, `config.aliases`).
"""

from __future__ import annotations

from kvroute.router.config.aliases import PluginRegistry
from kvroute.router.plugins.filters.label_selector import ByLabelFilter, ByLabelSelectorFilter, LabelSelectorFilter
from kvroute.router.plugins.filters.prefix_cache_affinity import PrefixCacheAffinityFilter
from kvroute.router.plugins.filters.role import DecodeFilter, PrefillFilter
from kvroute.router.plugins.flowcontrol.usage_limits import PriorityHoldbackPolicy, StaticUsageLimitPolicy
from kvroute.router.plugins.handlers.pd import PDProfileHandler
from kvroute.router.plugins.handlers.single import SingleProfileHandler
from kvroute.router.plugins.llmd import ALIASES as LLMD_ALIASES
from kvroute.router.plugins.pickers.max_score import MaxScorePicker
from kvroute.router.plugins.pickers.random_picker import RandomPicker
from kvroute.router.plugins.pickers.round_robin import RoundRobinPicker
from kvroute.router.plugins.pickers.softmax import SoftmaxPicker
from kvroute.router.plugins.pickers.weighted_random import WeightedRandomPicker
from kvroute.router.plugins.producers.approx_prefix_cache import ApproxPrefixCacheProducer
from kvroute.router.plugins.producers.inflight_load import InFlightLoadProducer
from kvroute.router.plugins.saturation.concurrency import ConcurrencyDetector
from kvroute.router.plugins.saturation.utilization import UtilizationDetector
from kvroute.router.plugins.scorers.active_blocks import ActiveBlocksScorer
from kvroute.router.plugins.scorers.active_request import ActiveRequestScorer
from kvroute.router.plugins.scorers.kv_cache_utilization import KVCacheUtilizationScorer
from kvroute.router.plugins.scorers.load_aware import LoadAwareScorer
from kvroute.router.plugins.scorers.lora_affinity import LoraAffinityScorer
from kvroute.router.plugins.scorers.no_hit_lru import NoHitLRUScorer
from kvroute.router.plugins.scorers.precise_prefix_cache import PrecisePrefixCacheScorer
from kvroute.router.plugins.scorers.predicted_latency import PredictedLatencyScorer
from kvroute.router.plugins.scorers.prefix_cache import PrefixCacheScorer
from kvroute.router.plugins.scorers.queue import QueueScorer
from kvroute.router.plugins.scorers.running_requests import RunningRequestsSizeScorer
from kvroute.router.plugins.scorers.session_affinity import SessionAffinityScorer
from kvroute.router.plugins.scorers.token_load import TokenLoadScorer

REGISTRY = PluginRegistry(
    {
        # profile handlers
        "single-profile-handler": SingleProfileHandler,
        "pd-profile-handler": PDProfileHandler,
        # filters
        "label-selector-filter": LabelSelectorFilter,
        "by-label": ByLabelFilter,
        "by-label-selector": ByLabelSelectorFilter,
        "decode-filter": DecodeFilter,
        "prefill-filter": PrefillFilter,
        "prefix-cache-affinity-filter": PrefixCacheAffinityFilter,
        # data producers
        "approx-prefix-cache-producer": ApproxPrefixCacheProducer,
        "inflight-load-producer": InFlightLoadProducer,
        # scorers
        "prefix-cache-scorer": PrefixCacheScorer,
        "precise-prefix-cache-scorer": PrecisePrefixCacheScorer,
        "no-hit-lru-scorer": NoHitLRUScorer,
        "active-blocks-scorer": ActiveBlocksScorer,
        "queue-scorer": QueueScorer,
        "kv-cache-utilization-scorer": KVCacheUtilizationScorer,
        "running-requests-size-scorer": RunningRequestsSizeScorer,
        "load-aware-scorer": LoadAwareScorer,
        "active-request-scorer": ActiveRequestScorer,
        "token-load-scorer": TokenLoadScorer,
        "predicted-latency-scorer": PredictedLatencyScorer,
        "lora-affinity-scorer": LoraAffinityScorer,
        "session-affinity-scorer": SessionAffinityScorer,
        # pickers
        "max-score-picker": MaxScorePicker,
        "random-picker": RandomPicker,
        "weighted-random-picker": WeightedRandomPicker,
        "round-robin-picker": RoundRobinPicker,
        "softmax-picker": SoftmaxPicker,
        # saturation detectors
        "utilization-detector": UtilizationDetector,
        "concurrency-detector": ConcurrencyDetector,
        # flow-control usage limits
        "static-usage-limit-policy": StaticUsageLimitPolicy,
        "priority-holdback-policy": PriorityHoldbackPolicy,
    },
    LLMD_ALIASES,
)
