"""The router's plugin registry, found at run time through the `kvroute.plugin_registry` entry point.

To accept or reject a SchedulingProfile the operator runs the router's own loader, which needs the plugin classes
(their `Params` models and their roles). The operator may import only the router's configuration package, not its
plugins (import-linter enforces it), so the router publishes its registry in the package metadata
(`[project.entry-points."kvroute.plugin_registry"] builtin = ...` in pyproject.toml) and the operator loads it by
that name when it starts. Everything below the CLI takes the registry as an argument, so tests pass one directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata

from kvroute.router.config.builder import Registry

ENTRY_POINT_GROUP = "kvroute.plugin_registry"
ENTRY_POINT_NAME = "builtin"


class RegistryNotFoundError(RuntimeError):
    pass


def load_plugin_registry(name: str = ENTRY_POINT_NAME) -> Registry:
    found = metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise RegistryNotFoundError(
            f'no entry point "{name}" in group "{ENTRY_POINT_GROUP}": the operator validates configurations with '
            "the router's plugin registry; install the kvroute distribution (pip install kvroute)"
        )
    registry = next(iter(found)).load()
    if not isinstance(registry, Mapping):
        raise RegistryNotFoundError(f'entry point "{name}" of "{ENTRY_POINT_GROUP}" is not a mapping of plugin types')
    return registry
