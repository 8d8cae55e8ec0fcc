"""The configuration document (`EndpointPickerConfig`): models, loading, defaulting and hot reload.

Importing this package loads only the models and `ConfigError` (the operator renders and validates documents with
them); the loader, builder and reload live in their modules.
"""

from kvroute.router.config.errors import ConfigError
from kvroute.router.config.models import (
    AdmissionSpec,
    EndpointPickerConfig,
    MetricsSpec,
    PluginSpec,
    ProfilePluginSpec,
    SaturationDetectorSpec,
    SchedulingProfileSpec,
)

__all__ = [
    "AdmissionSpec",
    "ConfigError",
    "EndpointPickerConfig",
    "MetricsSpec",
    "PluginSpec",
    "ProfilePluginSpec",
    "SaturationDetectorSpec",
    "SchedulingProfileSpec",
]
