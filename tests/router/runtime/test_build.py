"""`build_router(settings)`: the one assembly path of a router process."""

from __future__ import annotations

import pytest

from kvroute.router.config.errors import ConfigError
from kvroute.router.extproc.server import ExtProcDoor, ExtProcSettings
from kvroute.router.fleet.peers import StaticPeers
from kvroute.router.proxy.server import ProxyDoor, ProxyDoorSettings
from kvroute.router.runtime.build import (
    FleetOptions,
    KubernetesSettings,
    RouterSettings,
    SettingsError,
    build_router,
    fleet_settings,
)

PROXY = ProxyDoorSettings(host="127.0.4.250", port=0)
EXTPROC = ExtProcSettings(host="127.0.4.250", port=0, health_port=0, metrics_port=0, secure_serving=False)


def test_both_doors_are_built_on_one_director() -> None:
    router = build_router(
        RouterSettings(endpoints="127.0.0.2:8000,127.0.0.3:8000", max_body_bytes=4096, proxy=PROXY, extproc=EXTPROC)
    )

    proxy, extproc = router.doors
    assert isinstance(proxy, ProxyDoor) and isinstance(extproc, ExtProcDoor)
    assert proxy.director is extproc.director is router.core.director
    assert router.core.director.max_body_bytes == 4096
    assert [e.id for e in router.core.pool.snapshot()] == ["127.0.0.2:8000", "127.0.0.3:8000"]
    assert router.discovery is None
    assert router.core.fleet is None


async def test_a_built_proxy_router_serves_readiness() -> None:
    router = build_router(RouterSettings(endpoints="127.0.4.251:9", proxy=PROXY))

    async with router:
        (door,) = router.doors
        assert isinstance(door, ProxyDoor)
        assert door.port > 0
        assert router.core.director.not_ready_reason() == "no endpoint has fresh metrics"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (RouterSettings(endpoints="localhost:8000", proxy=PROXY), "'localhost' is not an IPv4 address"),
        (RouterSettings(proxy=PROXY), "no endpoints"),
        (RouterSettings(endpoints="127.0.0.2:8000"), "no front door to serve"),
        (
            RouterSettings(endpoints="127.0.0.2:8000", proxy=PROXY, fleet=FleetOptions(peer_selector="app=router")),
            "a fleet peer selector needs Kubernetes discovery",
        ),
    ],
)
def test_settings_that_cannot_be_served_are_refused(settings: RouterSettings, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        build_router(settings)


def test_static_endpoints_and_kubernetes_discovery_exclude_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kvroute.router.runtime.build._connect", lambda kubernetes: object())
    settings = RouterSettings(endpoints="127.0.0.2:8000", kubernetes=KubernetesSettings("llm"), proxy=PROXY)

    with pytest.raises(SettingsError, match="exclude each other"):
        build_router(settings)


def test_a_rejected_configuration_is_a_config_error() -> None:
    text = "apiVersion: kvroute.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n  - type: no-such-scorer\n"

    with pytest.raises(ConfigError, match='unknown plugin type "no-such-scorer"'):
        build_router(RouterSettings(endpoints="127.0.0.2:8000", config_text=text, proxy=PROXY))


def test_static_fleet_peers() -> None:
    options = FleetOptions(peers="127.0.0.5:9005,127.0.0.6:9005", host="127.0.0.5", port=9005, replica_id="a")

    fleet = fleet_settings(options, None)

    assert (fleet.replica_id, fleet.host, fleet.port) == ("a", "127.0.0.5", 9005)
    assert isinstance(fleet.peers, StaticPeers)


def test_fleet_peers_must_be_named_one_way() -> None:
    with pytest.raises(SettingsError, match="either static peers or a peer selector"):
        fleet_settings(FleetOptions(), None)
    with pytest.raises(SettingsError, match="expected host:port"):
        fleet_settings(FleetOptions(peers="127.0.0.2"), None)
