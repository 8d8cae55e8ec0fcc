"""`kvroute router`: flags, and the messages a wrong invocation gets before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvroute.cli import build_parser


def run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kvroute.cli", "router", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_every_flag_has_help_and_the_defaults_are_documented() -> None:
    parser = build_parser(["router"])
    args = parser.parse_args(["router", "--endpoints", "127.0.0.2:8000"])
    router = next(a for a in parser._subparsers._group_actions if a.dest == "part").choices["router"]  # type: ignore[union-attr]

    assert (args.mode, args.host, args.port, args.max_body_bytes) == ("proxy", "127.0.0.1", 8080, 10 * 1024 * 1024)
    assert (args.config, args.scrape_interval, args.log_level) == (None, None, "info")
    for action in router._actions:
        assert action.help, action.option_strings


@pytest.mark.parametrize(("value", "seconds"), [("50ms", 0.05), ("0.2", 0.2), ("1s", 1.0)])
def test_scrape_interval_takes_seconds_or_go_durations(value: str, seconds: float) -> None:
    args = build_parser(["router"]).parse_args(["router", "--endpoints", "127.0.0.2:8000", "--scrape-interval", value])

    assert args.scrape_interval == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "seconds"), [(None, 300.0), ("0", 0.0), ("90s", 90.0), ("2.5", 2.5)])
def test_upstream_idle_timeout_takes_a_duration_or_zero_for_none(value: str | None, seconds: float) -> None:
    flags = [] if value is None else ["--upstream-idle-timeout", value]
    args = build_parser(["router"]).parse_args(["router", "--endpoints", "127.0.0.2:8000", *flags])

    assert args.upstream_idle_timeout == pytest.approx(seconds)


def test_a_negative_upstream_idle_timeout_is_refused() -> None:
    result = run("--endpoints", "127.0.0.2:8000", "--upstream-idle-timeout", "-1")

    assert result.returncode == 2
    assert "must be a positive number of seconds" in result.stderr


def test_ext_proc_flags_default_to_the_endpoint_picker_conventions() -> None:
    args = build_parser(["router"]).parse_args(["router", "--mode", "ext-proc", "--endpoints", "127.0.0.2:8000"])
    off = build_parser(["router"]).parse_args(["router", "--endpoints", "127.0.0.2:8000", "--secure-serving=false"])

    assert (args.grpc_port, args.grpc_health_port, args.metrics_port) == (9002, 9003, 9090)
    assert (args.secure_serving, args.cert_path, args.response_mode, args.max_destinations) == (True, None, "full", 1)
    assert args.gie_conformance is False
    assert off.secure_serving is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--endpoints", "localhost:8000"), "'localhost' is not an IPv4 address"),
        (("--endpoints", "127.0.0.2:8000", "--scrape-interval", "soon"), "is not a duration"),
        (("--endpoints", "127.0.0.2:8000", "--max-body-bytes", "0"), "must be at least 1"),
        (("--endpoints", "127.0.0.2:8000", "--config", "/nonexistent/kvroute.yaml"), "cannot read --config"),
        ((), "give --endpoints (static discovery) or --pool-name (Kubernetes discovery)"),
        (("--endpoints", "127.0.0.2:8000", "--secure-serving", "maybe"), "'maybe' is not true or false"),
        (("--endpoints", "127.0.0.2:8000", "--grpc-port", "70000"), "must be between 0 and 65535"),
        (("--endpoints", "127.0.0.2:8000", "--secure-serving=false", "--cert-path", "/tmp"), "--cert-path needs"),
        (("--endpoints", "127.0.0.2:8000", "--mode", "ext-proc", "--response-mode", "half"), "invalid choice"),
        (("--endpoints", "127.0.0.2:8000", "--gie-conformance"), "--gie-conformance needs --mode ext-proc or both"),
    ],
)
def test_bad_invocations_fail_at_once(args: tuple[str, ...], message: str) -> None:
    result = run(*args)

    assert result.returncode == 2
    assert message in result.stderr


def test_an_invalid_configuration_names_the_offending_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "apiVersion: kvroute.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n  - type: no-such-scorer\n"
    )

    result = run("--endpoints", "127.0.0.2:8000", "--config", str(config))

    assert result.returncode == 2
    assert 'plugins[0].type: unknown plugin type "no-such-scorer"' in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--fleet-port", "9006"), "--fleet-port needs --fleet-peers or --fleet-peer-selector"),
        (("--replica-id", "a"), "--replica-id needs --fleet-peers or --fleet-peer-selector"),
        (("--fleet-sync-interval", "10ms"), "--fleet-sync-interval needs --fleet-peers"),
        (
            ("--fleet-peers", "127.0.0.2:9005", "--fleet-peer-selector", "app=router"),
            "give either --fleet-peers or --fleet-peer-selector, not both",
        ),
        (("--fleet-peer-selector", "app=router"), "--fleet-peer-selector needs Kubernetes discovery"),
        (("--fleet-peers", "127.0.0.2"), "--fleet-peers item 1 '127.0.0.2': expected host:port"),
        (("--fleet-peers", "127.0.0.2:9005", "--fleet-port", "8080"), "--fleet-port 8080 is also the --port"),
        (
            ("--fleet-peers", "127.0.0.2:9005", "--mode", "ext-proc", "--fleet-port", "9090"),
            "--fleet-port 9090 is also the --metrics-port",
        ),
        (("--fleet-peers", "127.0.0.2:9005", "--fleet-peer-timeout", "0"), "must be a positive number of seconds"),
    ],
)
def test_fleet_sync_flags_fail_at_once(args: tuple[str, ...], message: str) -> None:
    result = run("--endpoints", "127.0.0.2:8000", *args)

    assert result.returncode == 2
    assert message in result.stderr


def test_fleet_sync_is_off_unless_peers_are_given() -> None:
    args = build_parser(["router"]).parse_args(["router", "--endpoints", "127.0.0.2:8000"])

    assert (args.fleet_peers, args.fleet_peer_selector, args.fleet_port, args.replica_id) == (None, None, None, None)


def test_client_connection_and_admin_flags_default_to_bounded_and_off() -> None:
    from kvroute.router.cli import _settings

    parser = build_parser(["router"])
    defaults = _settings(parser.parse_args(["router", "--endpoints", "127.0.0.2:8000"]), parser)
    given = _settings(
        parser.parse_args(
            [
                *("router", "--endpoints", "127.0.0.2:8000", "--host", "0.0.0.0", "--max-connections", "100"),
                *("--header-read-timeout", "2s", "--keepalive-timeout", "500ms", "--body-read-timeout", "7"),
                *("--admin-port", "8081", "--max-config-bytes", "4096"),
            ]
        ),
        parser,
    )

    assert defaults.proxy is not None and given.proxy is not None
    limits = defaults.proxy.connections
    assert (limits.max_connections, limits.header_timeout, limits.keepalive_timeout, limits.body_timeout) == (
        4096,
        10.0,
        30.0,
        60.0,
    )
    assert (defaults.proxy.admin, defaults.max_config_bytes) == (None, 1024 * 1024)
    limits = given.proxy.connections
    assert (limits.max_connections, limits.header_timeout, limits.keepalive_timeout, limits.body_timeout) == (
        100,
        2.0,
        0.5,
        7.0,
    )
    admin = given.proxy.admin
    assert admin is not None
    assert (admin.host, admin.port, admin.max_config_bytes, given.max_config_bytes) == ("127.0.0.1", 8081, 4096, 4096)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--admin-port", "8080"), "--admin-port must differ from --port"),
        (("--mode", "ext-proc", "--admin-port", "8081"), "--admin-port needs --mode proxy or both"),
        (("--max-connections", "0"), "must be at least 1"),
        (("--header-read-timeout", "0"), "must be a positive number of seconds"),
    ],
)
def test_bad_hardening_flags_fail_at_once(args: tuple[str, ...], message: str) -> None:
    result = run("--endpoints", "127.0.0.2:8000", *args)

    assert result.returncode == 2
    assert message in result.stderr


def test_a_config_file_over_the_size_limit_is_refused_at_startup(tmp_path: Path) -> None:
    config = tmp_path / "big.yaml"
    config.write_text("apiVersion: kvroute.io/v1alpha1\nkind: EndpointPickerConfig\n" + "# pad\n" * 1000)

    result = run("--endpoints", "127.0.0.2:8000", "--config", str(config), "--max-config-bytes", "1000")

    assert result.returncode == 2
    assert "is larger than the 1000-byte limit for a configuration file" in result.stderr
