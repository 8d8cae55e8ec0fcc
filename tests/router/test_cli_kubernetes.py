"""`kvroute router` in Kubernetes mode: the discovery flags and what a wrong combination is told at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvroute.cli import build_parser


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
    command = [sys.executable, "-m", "kvroute.cli", "router", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False, env=env)


def test_the_flags_the_operator_passes_parse() -> None:
    args = build_parser(["router"]).parse_args(
        [
            "router",
            "--discovery",
            "kubernetes",
            "--pool-name",
            "llm",
            "--pool-namespace",
            "team-a",
            "--config-configmap",
            "llm-router",
            "--kubeconfig",
            "/etc/kube/config",
        ]
    )

    assert (args.discovery, args.pool_name, args.pool_namespace) == ("kubernetes", "llm", "team-a")
    assert (args.config_configmap, args.kubeconfig, args.endpoints) == ("llm-router", "/etc/kube/config", None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--discovery", "kubernetes"), "--discovery kubernetes needs --pool-name"),
        (("--discovery", "static"), "give --endpoints (static discovery) or --pool-name"),
        (
            ("--discovery", "kubernetes", "--pool-name", "llm", "--endpoints", "127.0.0.2:8000"),
            "--endpoints is for static discovery",
        ),
        (
            ("--endpoints", "127.0.0.2:8000", "--config-configmap", "c"),
            "--config-configmap needs --discovery kubernetes",
        ),
        (("--endpoints", "127.0.0.2:8000", "--kubeconfig", "k"), "--kubeconfig needs --discovery kubernetes"),
        (
            ("--pool-name", "llm", "--config", "c.yaml", "--config-configmap", "c"),
            "either --config or --config-configmap",
        ),
        (("--pool-name", "llm"), "not running in a Kubernetes pod"),
        (("--pool-name", "llm", "--kubeconfig", "/nonexistent/kubeconfig"), "cannot read kubeconfig"),
    ],
)
def test_wrong_combinations_fail_at_once(args: tuple[str, ...], message: str) -> None:
    result = run(*args)

    assert result.returncode == 2
    assert message in result.stderr


def test_outside_a_pod_the_namespace_must_be_given(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )

    result = run("--pool-name", "llm", "--kubeconfig", str(kubeconfig))

    assert result.returncode == 2
    assert "--pool-namespace is required when the router does not run in a pod" in result.stderr


def test_the_fleet_flags_the_operator_passes_watch_the_deployments_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes_asyncio.client import Configuration

    from kvroute.router.cli import _fleet
    from kvroute.router.datalayer.kubernetes import Cluster
    from kvroute.router.datalayer.kubernetes.peers import PeerPods
    from kvroute.router.datalayer.kubernetes.startup import KubernetesSource
    from kvroute.router.runtime.build import fleet_settings

    monkeypatch.setenv("POD_NAME", "llm-kvroute-6b7c9-x2x4z")
    monkeypatch.setenv("POD_IP", "127.0.7.3")
    selector = "app.kubernetes.io/instance=llm,app.kubernetes.io/name=kvroute-router"
    parser = build_parser(["router"])
    args = parser.parse_args(
        ["router", "--pool-name", "llm", "--host", "0.0.0.0", "--fleet-peer-selector", selector, "--fleet-port", "9005"]
    )
    source = KubernetesSource(Cluster(Configuration(host="http://127.0.0.1:9")), "team-a", "llm")

    options = _fleet(args, parser, kubernetes=True)
    assert options is not None
    fleet = fleet_settings(options, source)

    assert fleet is not None
    assert (fleet.replica_id, fleet.host, fleet.port, fleet.interval, fleet.peer_timeout) == (
        "llm-kvroute-6b7c9-x2x4z",
        "0.0.0.0",
        9005,
        0.0,  # sent as soon as the event loop is free
        10.0,
    )
    peers = fleet.peers
    assert isinstance(peers, PeerPods)
    assert (peers.namespace, peers.selector.query(), peers.port) == ("team-a", selector, 9005)
