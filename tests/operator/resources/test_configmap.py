from __future__ import annotations

from kvroute.operator.render import RenderedConfig
from kvroute.operator.resources.configmap import config_map
from kvroute.operator.resources.meta import Pool

from ..conftest import pool_object


def test_config_map_holds_the_rendered_document_and_its_hash() -> None:
    pool = Pool.from_object(pool_object("llama"))
    config = RenderedConfig.of("apiVersion: kvroute.io/v1alpha1\nkind: EndpointPickerConfig\n")
    cm = config_map(pool, config)
    assert cm["apiVersion"] == "v1"
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] == "llama-kvroute-config"
    assert cm["metadata"]["annotations"] == {"kvroute.io/config-hash": config.hash}
    assert cm["metadata"]["ownerReferences"][0]["uid"] == pool.uid
    assert cm["data"] == {"config.yaml": config.text}
