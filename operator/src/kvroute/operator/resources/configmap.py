"""The ConfigMap holding a pool's router configuration; routers watch it through the API and hot-reload it."""

from __future__ import annotations

from typing import Any

from kvroute.operator.render import CONFIG_KEY, RenderedConfig
from kvroute.operator.resources.meta import ANNOTATION_CONFIG_HASH, Pool, object_meta


def config_map(pool: Pool, config: RenderedConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(pool, pool.config_map_name, {ANNOTATION_CONFIG_HASH: config.hash}),
        "data": {CONFIG_KEY: config.text},
    }
