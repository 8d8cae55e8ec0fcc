from __future__ import annotations

import pytest

from kvroute.operator.registry import RegistryNotFoundError, load_plugin_registry
from kvroute.router.plugins.registry import REGISTRY


def test_entry_point_publishes_the_routers_registry() -> None:
    assert load_plugin_registry() is REGISTRY


def test_missing_entry_point_is_an_explained_error() -> None:
    with pytest.raises(RegistryNotFoundError) as caught:
        load_plugin_registry("nope")
    assert str(caught.value).startswith('no entry point "nope" in group "kvroute.plugin_registry"')
