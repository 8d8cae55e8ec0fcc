"""The router's configuration from a ConfigMap (`--config-configmap NAME`), hot-reloaded when it changes.

The document is the value of the key `config.yaml` (`CONFIG_KEY`) in the ConfigMap's `data`, in the router's
namespace. At startup `read_config_text()` fetches it once, and a document that is missing or rejected then is a
startup error, exactly as with `--config FILE`. Afterwards `ConfigMapReloader` receives every version the watch
sees and hands new text to `ConfigHolder.reload_text`: the configuration is swapped only if the new document
builds completely. A rejected document, a missing key or a deleted ConfigMap keep the current configuration
serving; each is logged and counted in `kvroute_config_reloads_total{result="failure"}` (deletion is only logged:
it is what happens when the pool is deleted, moments before the router itself goes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kvroute.router.config.errors import ConfigError
from kvroute.router.config.reload import ConfigHolder
from kvroute.router.datalayer.kubernetes.api import KubeClient, collection_path
from kvroute.router.observability import RouterMetrics

log = logging.getLogger(__name__)

CONFIG_KEY = "config.yaml"


class ConfigMapError(Exception):
    """The ConfigMap holds no usable configuration text."""


def configmaps_path(namespace: str) -> str:
    return collection_path(namespace, "configmaps")


def config_text(config_map: Mapping[str, Any], key: str = CONFIG_KEY) -> str:
    """The configuration document in `config_map`; raises `ConfigMapError` when the key is missing."""
    data = config_map.get("data") or {}
    text = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(text, str):
        name = (config_map.get("metadata") or {}).get("name", "?")
        raise ConfigMapError(f"ConfigMap {name} has no key {key!r} in data")
    return text


async def read_config_text(client: KubeClient, namespace: str, name: str, key: str = CONFIG_KEY) -> str:
    """Fetch the document once; raises `ApiError` (e.g. 404, 403) or `ConfigMapError`."""
    return config_text(await client.get(f"{configmaps_path(namespace)}/{name}"), key)


class ConfigMapReloader:
    """The ConfigMap watch's change handler. `applied` is the text the holder was built from, so that seeing the
    same document again (every relist does) reloads nothing."""

    def __init__(
        self,
        holder: ConfigHolder,
        name: str,
        *,
        key: str = CONFIG_KEY,
        applied: str | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self._holder = holder
        self._name = name
        self._key = key
        self._seen = applied
        self._metrics = metrics
        self._missing = False
        self._key_missing = False

    def on_change(self, store: Mapping[str, Mapping[str, Any]]) -> None:
        config_map = store.get(self._name)
        if config_map is None:
            if not self._missing:
                log.warning("ConfigMap %s is gone; keeping the current configuration", self._name)
            self._missing = True
            return
        self._missing = False
        try:
            text = config_text(config_map, self._key)
        except ConfigMapError as exc:
            if not self._key_missing:
                log.error("%s; keeping the current configuration", exc)
                if self._metrics is not None:
                    self._metrics.record_config_reload(False)
            self._key_missing = True
            self._seen = None
            return
        self._key_missing = False
        if text == self._seen:
            return
        # A rejected text is remembered too: it is not retried (nor counted again) until it changes.
        self._seen = text
        try:
            self._holder.reload_text(text)
        except ConfigError as exc:
            log.error("configuration in ConfigMap %s rejected, keeping the current configuration:\n%s", self._name, exc)
        except Exception:
            log.exception("reloading the configuration from ConfigMap %s failed", self._name)
        else:
            log.info("configuration reloaded from ConfigMap %s", self._name)
