"""Hot reload: the current configuration, replaced whole and only by one that built completely.

A new document is parsed, validated and built before it replaces the current `LoadedConfig` in one assignment.
Readers take `holder.current` once per request and keep that object until the request completes, so a request
never mixes two configurations, and response hooks run on the plugins that scheduled it. Plugins whose name, type
and parameters did not change are carried over as the same instances (see `builder`), so their state survives.
A rejected document changes nothing: the old configuration keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from kvroute.router.config.builder import LoadedConfig, Registry
from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.config.errors import ConfigError
from kvroute.router.config.loader import load_config
from kvroute.router.observability import RouterMetrics

log = logging.getLogger(__name__)

Listener = Callable[[LoadedConfig], None]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ConfigHolder:
    def __init__(
        self,
        config: LoadedConfig,
        registry: Registry,
        *,
        metrics: RouterMetrics | None = None,
        text: str | None = None,
    ) -> None:
        self._current = config
        self._registry = registry
        self._metrics = metrics
        self._digest = _digest(text) if text is not None else None
        self._listeners: list[Listener] = []

    @classmethod
    def load(cls, registry: Registry, text: str | None = None, *, metrics: RouterMetrics | None = None) -> ConfigHolder:
        """Loads `text`, or the built-in default document when it is None. A `ConfigError` here is a startup
        error, not a failed reload."""
        source = DEFAULT_CONFIG_TEXT if text is None else text
        return cls(load_config(source, registry, metrics=metrics), registry, metrics=metrics, text=source)

    @property
    def current(self) -> LoadedConfig:
        return self._current

    def subscribe(self, listener: Listener) -> None:
        """`listener(new)` is called after each successful reload (e.g. to apply a new scrape interval)."""
        self._listeners.append(listener)

    def reload_text(self, text: str) -> LoadedConfig:
        """Builds `text` against the current configuration and swaps it in; raises `ConfigError` and keeps the
        current configuration when the document is rejected."""
        try:
            config = load_config(text, self._registry, previous=self._current, metrics=self._metrics)
        except Exception:
            self._count(success=False)
            raise
        self._current = config
        self._digest = _digest(text)
        self._count(success=True)
        for listener in self._listeners:
            try:
                listener(config)
            except Exception:
                log.exception("configuration listener %r failed", listener)
        return config

    async def watch_file(self, path: str | os.PathLike[str], interval: float = 1.0) -> None:
        """Reloads from `path` whenever its content changes, polling every `interval` seconds until cancelled.
        Failures are logged and counted, never raised. The content is hashed on every poll instead of trusting
        the mtime, whose resolution can hide two writes in one tick; a config file is small."""
        file = Path(path)
        seen = self._digest
        readable = True
        while True:
            try:
                text = await asyncio.to_thread(file.read_text, encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                if readable:
                    log.warning("cannot read configuration file %s: %s", file, exc)
                readable = False
            else:
                readable = True
                digest = _digest(text)
                if digest != seen:
                    seen = digest
                    try:
                        self.reload_text(text)
                    except ConfigError as exc:
                        log.error("configuration file %s rejected, keeping the current configuration:\n%s", file, exc)
                    except Exception:
                        log.exception("reloading configuration file %s failed", file)
                    else:
                        log.info("configuration reloaded from %s", file)
            await asyncio.sleep(interval)

    def _count(self, *, success: bool) -> None:
        if self._metrics is not None:
            self._metrics.record_config_reload(success)
