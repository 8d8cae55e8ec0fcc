"""Hot reload: the current configuration, replaced whole and only by one that built completely.

A new document is parsed, validated and built before it replaces the current `LoadedConfig` in one assignment.
Readers take `holder.current` once per request and keep that object until the request completes, so a request
never mixes two configurations, and response hooks run on the plugins that scheduled it. Plugins whose name, type
and parameters did not change are carried over as the same instances (see `builder`), so their state survives.
A rejected document changes nothing: the old configuration keeps serving.

A configuration file is read with a size cap (`read_config_file`, default `MAX_CONFIG_BYTES`), and the router
reloads through `reload`, which parses the document in a worker thread: a large or deeply nested one never stalls
the event loop, and so never the requests it serves.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from kvroute.router.config.builder import LoadedConfig, Registry, build
from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT
from kvroute.router.config.errors import ConfigError
from kvroute.router.config.loader import load_config, parse_config
from kvroute.router.observability import RouterMetrics

log = logging.getLogger(__name__)

Listener = Callable[[LoadedConfig], None]

MAX_CONFIG_BYTES = 1024 * 1024


class ConfigTooLarge(ConfigError):
    """A configuration file over the size limit; nothing of it was parsed."""

    def __init__(self, path: str | os.PathLike[str], limit: int) -> None:
        super().__init__(f"{os.fspath(path)} is larger than the {limit}-byte limit for a configuration file")
        self.limit = limit


def read_config_file(path: str | os.PathLike[str], max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The text of a configuration file, reading at most `max_bytes + 1` bytes (blocking: call it in a thread
    from async code). Raises `ConfigTooLarge`, `OSError` or `UnicodeDecodeError`."""
    with open(path, "rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigTooLarge(path, max_bytes)
    return data.decode("utf-8")


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
        return self._install(config, text)

    async def reload(self, text: str) -> LoadedConfig:
        """`reload_text`, with the document parsed and validated in a worker thread (the plugins are built on
        the event loop, against the configuration current by then)."""
        try:
            document = await asyncio.to_thread(parse_config, text)
            config = build(document, self._registry, previous=self._current, metrics=self._metrics)
        except Exception:
            self._count(success=False)
            raise
        return self._install(config, text)

    def _install(self, config: LoadedConfig, text: str) -> LoadedConfig:
        self._current = config
        self._digest = _digest(text)
        self._count(success=True)
        for listener in self._listeners:
            try:
                listener(config)
            except Exception:
                log.exception("configuration listener %r failed", listener)
        return config

    async def watch_file(
        self, path: str | os.PathLike[str], interval: float = 1.0, max_bytes: int = MAX_CONFIG_BYTES
    ) -> None:
        """Reloads from `path` whenever its content changes, polling every `interval` seconds until cancelled.
        Failures are logged and counted, never raised. The content is hashed on every poll instead of trusting
        the mtime, whose resolution can hide two writes in one tick; a config file is small (`max_bytes` at most,
        or it is not read)."""
        file = Path(path)
        seen = self._digest
        readable = True
        while True:
            try:
                text = await asyncio.to_thread(read_config_file, file, max_bytes)
            except (OSError, UnicodeDecodeError, ConfigTooLarge) as exc:
                if readable:
                    log.warning("cannot read configuration file %s: %s", file, exc)
                readable = False
            else:
                readable = True
                digest = _digest(text)
                if digest != seen:
                    seen = digest
                    try:
                        await self.reload(text)
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
