"""Turns a validated document into a runnable `LoadedConfig`: plugin instances, profiles, handler, detector.

The rules, which follow GIE's defaulting and add the errors GIE leaves silent:
- Plugin names are unique (a name defaults to the type); the type must be in the registry, or be an upstream
  name the registry maps (`config.aliases`: built as its kvroute equivalent with translated parameters,
  absorbed by the plugin doing its job, or rejected naming what to use instead); `parameters` are validated by
  the type's `Params`.
- A plugin's roles are the framework ABCs it is an instance of; one object may have several.
- Data producers run once per scheduling cycle, in document order, whether or not anything reads them; a
  profile cannot refer to one.
- At most one profile handler.
- No profiles listed: one `default` profile with every filter, scorer and picker in document order (profile
  handlers and saturation detectors excepted), scorers weighing 1.0.
- A profile refers only to filters, scorers and pickers, each at most once, with at most one picker; a weight
  only on a scorer; a scorer without weight weighs 1.0; a profile without picker gets `max-score-picker`.
- No profile handler: `single-profile-handler` when there is exactly one profile, else an error.
- The saturation detector is `saturationDetector.pluginRef`, else the only detector in `plugins`, else a
  `utilization-detector` (taking the GIE-style thresholds of `saturationDetector` as its parameters).
- A plugin whose name, type and validated parameters equal those of a plugin of `previous` is that same instance,
  so its state (prefix index, LRU, active blocks) survives a reload.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from kvroute.router.config.aliases import Absorbed, AliasEntry, TranslationError, Unsupported, aliases_of
from kvroute.router.config.defaults import (
    DEFAULT_HANDLER_TYPE,
    DEFAULT_PICKER_PARAMETERS,
    DEFAULT_PICKER_TYPE,
    DEFAULT_PROFILE_NAME,
    DEFAULT_SATURATION_DETECTOR_TYPE,
    DEFAULT_SCORER_WEIGHT,
)
from kvroute.router.config.errors import ConfigError, Loc, at, validation_messages
from kvroute.router.config.models import (
    AdmissionSpec,
    EndpointPickerConfig,
    FlowControlSpec,
    MetricsSpec,
    PluginSpec,
    SaturationDetectorSpec,
    SchedulingProfileSpec,
)
from kvroute.router.framework import (
    Clock,
    DataProducer,
    Filter,
    KVEventsConsumer,
    Picker,
    Plugin,
    Preparer,
    PreRequest,
    ProfileHandler,
    ResponseHook,
    SaturationDetector,
    SchedulingProfile,
    Scorer,
    UsageLimitPolicy,
)
from kvroute.router.scheduling import Scheduler, SchedulerMetrics

Registry = Mapping[str, type[Plugin]]

_PROFILE_ROLES = (Filter, Scorer, Picker)
_OTHER_ROLES = (
    (ProfileHandler, "profile handler"),
    (DataProducer, "data producer"),
    (SaturationDetector, "saturation detector"),
    (UsageLimitPolicy, "usage limit policy"),
    (PreRequest, "pre-request hook"),
    (Preparer, "preparer"),
    (KVEventsConsumer, "KV events consumer"),
    (ResponseHook, "response hook"),
)


@dataclass(frozen=True, eq=False)
class LoadedConfig:
    """Everything one configuration runs with. Immutable: a reload builds a new one and swaps it in whole."""

    document: EndpointPickerConfig
    scheduler: Scheduler
    plugins: Mapping[str, Plugin]  # by name: the document's in order, then the defaulted ones
    pre_request: tuple[PreRequest, ...]  # in `plugins` order, whether or not a profile refers to them
    response_hooks: tuple[ResponseHook, ...]
    saturation_detector: SaturationDetector
    preparers: tuple[Preparer, ...] = ()  # in `plugins` order; empty: requests are scheduled without awaiting
    kv_events_consumers: tuple[KVEventsConsumer, ...] = ()
    usage_limit_policy: UsageLimitPolicy | None = None  # flowControl.usageLimitPolicyPluginRef; None: 1.0 for all

    @property
    def handler(self) -> ProfileHandler:
        return self.scheduler.handler

    @property
    def profiles(self) -> Mapping[str, SchedulingProfile]:
        return self.scheduler.profiles

    @property
    def metrics(self) -> MetricsSpec:
        return self.document.metrics

    @property
    def max_metrics_age(self) -> float | None:
        """The oldest scraped metrics every saturation detector of the configuration trusts (the pool's and those
        used as filters); None when none of them looks at the age."""
        detectors = [self.saturation_detector, *(p for p in self.plugins.values() if isinstance(p, SaturationDetector))]
        ages = [d.max_metrics_age for d in detectors if d.max_metrics_age is not None]
        return min(ages) if ages else None

    @property
    def admission(self) -> AdmissionSpec:
        return self.document.admission


def build(
    document: EndpointPickerConfig,
    registry: Registry,
    *,
    previous: LoadedConfig | None = None,
    metrics: SchedulerMetrics | None = None,
    rng: random.Random | None = None,
    clock: Clock | None = None,
) -> LoadedConfig:
    """Instantiates and wires the plugins of `document`; raises `ConfigError` listing every problem found.

    With `rng`, every picker (and plugin that `uses_rng`) gets its own generator seeded from it, so a run is
    reproducible from one seed.
    `clock` is the time source of plugins that read the time (`uses_clock`); default `time.monotonic`."""
    builder = _Builder(registry, previous.plugins if previous is not None else {}, rng, clock or time.monotonic)
    return builder.build(document, metrics)


def publishers_first(scorers: list[tuple[Scorer, float]]) -> tuple[tuple[Scorer, float], ...]:
    """Scorers that publish cycle state run before those that may read it; otherwise config order is kept."""
    return tuple(sorted(scorers, key=lambda entry: not entry[0].publishes_state))


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


class _Builder:
    def __init__(
        self, registry: Registry, previous: Mapping[str, Plugin], rng: random.Random | None, clock: Clock
    ) -> None:
        self.registry = registry
        self.rng = rng
        self.clock = clock
        self.previous = previous
        self.plugins: dict[str, Plugin] = {}
        self.absorbed: dict[str, tuple[str, str]] = {}  # name -> (upstream type, what does its job)
        self.errors: list[str] = []

    def error(self, loc: Loc, message: str) -> None:
        self.errors.append(at(loc, message))

    def build(self, document: EndpointPickerConfig, metrics: SchedulerMetrics | None) -> LoadedConfig:
        aliases = aliases_of(self.registry)
        for i, spec in enumerate(document.plugins):
            name = spec.instance_name
            if name in self.plugins or name in self.absorbed:
                self.error(("plugins", i, "name"), f'duplicate plugin name "{name}"')
            elif spec.type in self.registry:
                self.instantiate(("plugins", i), name, spec.type, spec.parameters, ("plugins", i, "parameters"))
            elif spec.type in aliases:
                self.aliased(i, spec, aliases[spec.type], document)
            else:
                self.error(("plugins", i, "type"), f'unknown plugin type "{spec.type}"')
        if self.errors:
            raise ConfigError(self.errors)

        handlers = [(i, p) for i, p in enumerate(self.plugins.values()) if isinstance(p, ProfileHandler)]
        if len(handlers) > 1:
            self.error(
                ("plugins", handlers[1][0]), f"more than one profile handler ({_quoted([p.name for _, p in handlers])})"
            )
        profiles = self.profiles(document.scheduling_profiles)
        handler = handlers[0][1] if handlers else None
        if handler is None and len(profiles) == 1:
            plugin = self.default(DEFAULT_HANDLER_TYPE, ("plugins",), ProfileHandler)
            handler = plugin if isinstance(plugin, ProfileHandler) else None
        elif handler is None and len(profiles) > 1:
            self.error(("schedulingProfiles",), f"{len(profiles)} profiles need a profile handler in plugins")
        detector = self.detector(document.saturation_detector)
        usage_limit = self.usage_limit(document.flow_control)
        if self.errors or handler is None or detector is None:
            raise ConfigError(self.errors)

        instances = list(self.plugins.values())
        producers = tuple(p for p in instances if isinstance(p, DataProducer))
        return LoadedConfig(
            document=document,
            scheduler=Scheduler(handler, profiles, metrics, producers),
            plugins=MappingProxyType(self.plugins),
            pre_request=tuple(p for p in instances if isinstance(p, PreRequest)),
            response_hooks=tuple(p for p in instances if isinstance(p, ResponseHook)),
            saturation_detector=detector,
            preparers=tuple(p for p in instances if isinstance(p, Preparer)),
            kv_events_consumers=tuple(p for p in instances if isinstance(p, KVEventsConsumer)),
            usage_limit_policy=usage_limit,
        )

    def aliased(self, i: int, spec: PluginSpec, entry: AliasEntry, document: EndpointPickerConfig) -> None:
        """An upstream type name: built as its kvroute equivalent, absorbed, or rejected (`config.aliases`)."""
        name, params_loc = spec.instance_name, ("plugins", i, "parameters")
        if isinstance(entry, Unsupported):
            self.error(
                ("plugins", i, "type"),
                f'{entry.origin} plugin type "{spec.type}" has no kvroute equivalent; {entry.instead}',
            )
        elif isinstance(entry, Absorbed):
            self.absorbed[name] = (spec.type, entry.by)
        else:
            parameters: Mapping[str, Any] | None = spec.parameters
            if entry.translate is not None:
                try:
                    parameters = entry.translate(spec.parameters or {}, document)
                except TranslationError as exc:
                    self.error((*params_loc, *exc.loc), exc.message)
                    return
            self.instantiate(("plugins", i), name, entry.target, parameters, params_loc)

    def instantiate(
        self, loc: Loc, name: str, type_name: str, parameters: Mapping[str, Any] | None, params_loc: Loc
    ) -> Plugin | None:
        cls = self.registry[type_name]
        try:
            params = cls.Params.model_validate(parameters or {})
        except ValidationError as exc:
            self.errors.extend(validation_messages(exc, params_loc))
            return None
        old = self.previous.get(name)
        if old is not None and type(old) is cls and old.params == params:
            plugin = old
        else:
            extra: dict[str, Any] = {}
            if self.rng is not None and (issubclass(cls, Picker) or cls.uses_rng):
                extra["rng"] = random.Random(self.rng.getrandbits(64))
            if cls.uses_clock:
                extra["clock"] = self.clock
            try:
                plugin = cls(name, params, **extra)
            except Exception as exc:
                self.error(loc, f'cannot create plugin "{name}" of type "{type_name}": {exc}')
                return None
        self.plugins[name] = plugin
        return plugin

    def default(
        self,
        type_name: str,
        loc: Loc,
        role: type[Plugin],
        parameters: Mapping[str, Any] | None = None,
        params_loc: Loc = (),
    ) -> Plugin | None:
        """The plugin defaulting adds, named after its type and shared by every place that needs it; None (and an
        error) when it cannot be created or does not have `role`. Callers narrow the result with `isinstance`."""
        plugin = self.plugins.get(type_name)
        if plugin is None:
            if type_name not in self.registry:
                self.error(loc, f'default plugin type "{type_name}" is not registered')
                return None
            plugin = self.instantiate(loc, type_name, type_name, parameters, params_loc)
        elif plugin.type_name != type_name:
            self.error(loc, f'cannot add the default "{type_name}": the name is taken by a "{plugin.type_name}"')
            return None
        if plugin is not None and not isinstance(plugin, role):
            self.error(loc, f'default plugin type "{type_name}" is not a {role.__name__}')
            return None
        return plugin

    def profiles(self, specs: list[SchedulingProfileSpec]) -> dict[str, SchedulingProfile]:
        if not specs:
            return self.default_profile()
        profiles: dict[str, SchedulingProfile] = {}
        for k, spec in enumerate(specs):
            loc: Loc = ("schedulingProfiles", k)
            if spec.name in profiles:
                self.error((*loc, "name"), f'duplicate profile name "{spec.name}"')
                continue
            filters: list[Filter] = []
            scorers: list[tuple[Scorer, float]] = []
            picker: Picker | None = None
            seen: set[str] = set()
            for j, ref in enumerate(spec.plugins):
                ref_loc: Loc = (*loc, "plugins", j)
                name = ref.plugin_ref
                plugin = self.plugins.get(name)
                if plugin is None and name in self.absorbed:
                    type_name, by = self.absorbed[name]
                    self.error(
                        (*ref_loc, "pluginRef"),
                        f'plugin "{name}" ({type_name}) builds nothing here, its job is done by {by}; '
                        "a profile cannot refer to it",
                    )
                    continue
                if plugin is None:
                    self.error((*ref_loc, "pluginRef"), f'unknown plugin "{name}"')
                    continue
                if name in seen:
                    self.error((*ref_loc, "pluginRef"), f'plugin "{name}" is already in profile "{spec.name}"')
                    continue
                seen.add(name)
                if not isinstance(plugin, _PROFILE_ROLES):
                    role = next((label for abc, label in _OTHER_ROLES if isinstance(plugin, abc)), "plugin")
                    self.error(
                        (*ref_loc, "pluginRef"),
                        f'plugin "{name}" is a {role}; a profile holds only filters, scorers and pickers',
                    )
                    continue
                if ref.weight is not None and not isinstance(plugin, Scorer):
                    self.error((*ref_loc, "weight"), f'plugin "{name}" is not a scorer; only scorers take a weight')
                if isinstance(plugin, Filter):
                    filters.append(plugin)
                if isinstance(plugin, Scorer):
                    scorers.append((plugin, DEFAULT_SCORER_WEIGHT if ref.weight is None else ref.weight))
                if isinstance(plugin, Picker):
                    if picker is not None:
                        self.error(
                            (*ref_loc, "pluginRef"),
                            f'more than one picker in profile "{spec.name}" ({_quoted([picker.name, name])})',
                        )
                    else:
                        picker = plugin
            if picker is None:
                plugin = self.default(DEFAULT_PICKER_TYPE, loc, Picker, DEFAULT_PICKER_PARAMETERS)
                picker = plugin if isinstance(plugin, Picker) else None
            if picker is not None:
                profiles[spec.name] = SchedulingProfile(spec.name, tuple(filters), publishers_first(scorers), picker)
        return profiles

    def default_profile(self) -> dict[str, SchedulingProfile]:
        members = [
            p
            for p in self.plugins.values()
            if isinstance(p, _PROFILE_ROLES) and not isinstance(p, ProfileHandler | SaturationDetector)
        ]
        pickers = [p for p in members if isinstance(p, Picker)]
        if len(pickers) > 1:
            self.error(
                ("schedulingProfiles",),
                f"none listed, and the default profile would hold more than one picker "
                f"({_quoted([p.name for p in pickers])}); list the profiles",
            )
            return {}
        plugin = (
            pickers[0]
            if pickers
            else self.default(DEFAULT_PICKER_TYPE, ("schedulingProfiles",), Picker, DEFAULT_PICKER_PARAMETERS)
        )
        if not isinstance(plugin, Picker):
            return {}
        picker = plugin
        filters = tuple(p for p in members if isinstance(p, Filter))
        scorers = publishers_first([(p, DEFAULT_SCORER_WEIGHT) for p in members if isinstance(p, Scorer)])
        return {DEFAULT_PROFILE_NAME: SchedulingProfile(DEFAULT_PROFILE_NAME, filters, scorers, picker)}

    def detector(self, spec: SaturationDetectorSpec) -> SaturationDetector | None:
        loc: Loc = ("saturationDetector",)
        thresholds = spec.detector_parameters()
        if spec.plugin_ref is not None:
            self.misplaced_thresholds(thresholds, "cannot be combined with pluginRef", spec.plugin_ref)
            plugin = self.plugins.get(spec.plugin_ref)
            if plugin is None:
                self.error((*loc, "pluginRef"), f'unknown plugin "{spec.plugin_ref}"')
                return None
            if not isinstance(plugin, SaturationDetector):
                self.error((*loc, "pluginRef"), f'plugin "{spec.plugin_ref}" is not a saturation detector')
                return None
            return plugin
        detectors = [p for p in self.plugins.values() if isinstance(p, SaturationDetector)]
        if len(detectors) > 1:
            self.error(
                (*loc, "pluginRef"),
                f"required when several saturation detectors are configured ({_quoted([p.name for p in detectors])})",
            )
            return None
        if detectors:
            applies = f"applies only to the default {DEFAULT_SATURATION_DETECTOR_TYPE}"
            self.misplaced_thresholds(thresholds, applies, detectors[0].name)
            return detectors[0]
        plugin = self.default(DEFAULT_SATURATION_DETECTOR_TYPE, loc, SaturationDetector, thresholds, loc)
        return plugin if isinstance(plugin, SaturationDetector) else None

    def usage_limit(self, spec: FlowControlSpec | None) -> UsageLimitPolicy | None:
        ref = spec.usage_limit_policy_plugin_ref if spec is not None else None
        if ref is None:
            return None
        loc: Loc = ("flowControl", "usageLimitPolicyPluginRef")
        plugin = self.plugins.get(ref)
        if plugin is None:
            self.error(loc, f'unknown plugin "{ref}"')
            return None
        if not isinstance(plugin, UsageLimitPolicy):
            self.error(loc, f'plugin "{ref}" is not a usage limit policy')
            return None
        return plugin

    def misplaced_thresholds(self, thresholds: Mapping[str, Any], problem: str, detector: str) -> None:
        for field in thresholds:
            self.error(("saturationDetector", field), f'{problem}; set it in the parameters of plugin "{detector}"')
