"""Upstream plugin type names (GIE, llm-d) that the builder maps onto kvroute's plugin types.

A `PluginRegistry` is the mapping `type name -> plugin class` the builder instantiates from, plus `aliases`:
names of other projects' plugin types, each one of

- `Alias`: load as the kvroute type `target`; `translate`, when given, rewrites the document's `parameters`
  into the target's (it may read the rest of the document, e.g. the parameters of a plugin it refers to);
- `Absorbed`: a plugin whose whole job is already done by `by` (a decider the P/D handler's translation reads, a
  hook setting a header the handler sets, a metrics source the router's scraper replaces). It is accepted and
  builds nothing; a profile cannot refer to it;
- `Unsupported`: kvroute has nothing with these semantics; loading fails naming the type, the path, and
  `instead`, what to use.

A translation raises `TranslationError` to reject parameters it cannot map; the builder reports it under the
plugin's `parameters` path, like a validation error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvroute.router.config.errors import Loc
from kvroute.router.config.models import EndpointPickerConfig
from kvroute.router.framework import Plugin

Translate = Callable[[Mapping[str, Any], EndpointPickerConfig], dict[str, Any]]


class TranslationError(Exception):
    """Parameters an alias cannot map; `loc` is the offending key's path below `parameters`."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


@dataclass(frozen=True, slots=True)
class Alias:
    target: str
    origin: str
    translate: Translate | None = None


@dataclass(frozen=True, slots=True)
class Absorbed:
    by: str  # what does its job, for messages: "pd-profile-handler (it sets x-prefiller-host-port itself)"
    origin: str


@dataclass(frozen=True, slots=True)
class Unsupported:
    instead: str
    origin: str


AliasEntry = Alias | Absorbed | Unsupported


@dataclass(frozen=True)
class PluginRegistry(Mapping[str, type[Plugin]]):
    """kvroute's plugin types by name (the mapping itself) and the upstream names mapped onto them (`aliases`)."""

    types: Mapping[str, type[Plugin]]
    aliases: Mapping[str, AliasEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(set(self.types) & set(self.aliases))
        if clash:
            raise ValueError(f"names both registered and aliased: {', '.join(clash)}")
        for name, entry in self.aliases.items():
            if isinstance(entry, Alias) and entry.target not in self.types:
                raise ValueError(f'alias "{name}" refers to the unregistered type "{entry.target}"')

    def __getitem__(self, name: str) -> type[Plugin]:
        return self.types[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.types)

    def __len__(self) -> int:
        return len(self.types)


def aliases_of(registry: Mapping[str, type[Plugin]]) -> Mapping[str, AliasEntry]:
    return registry.aliases if isinstance(registry, PluginRegistry) else {}
