from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import aiohttp
import pytest
import yaml

from kvroute.cli import build_parser, main
from kvroute.operator.cli import settings_from_args
from kvroute.operator.context import OperatorMetrics
from kvroute.operator.crdgen import render_yaml, scheduling_profile_crd
from kvroute.operator.settings import OperatorSettings
from kvroute.router.config.builder import Registry
from tests.support import eventually, free_port

from .conftest import (
    DEPLOYMENTS,
    POOLS,
    RunningOperator,
    declare_resources,
    operator_running,
    pool_object,
)


def _settings(*argv: str) -> OperatorSettings:
    args = ["operator", "run", *argv]
    return settings_from_args(build_parser(args).parse_args(args))


def test_run_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KVROUTE_OPERATOR_NAMESPACES", "KVROUTE_ROUTER_IMAGE", "KVROUTE_OPERATOR_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = _settings("--kubeconfig", "/tmp/kc", "-n", "a", "--namespace", "b", "--router-image", "img:1")
    assert settings.kubeconfig == "/tmp/kc"
    assert settings.namespaces == ("a", "b")
    assert not settings.clusterwide
    assert settings.router_image == "img:1"
    assert (settings.health_port, settings.metrics_port) == (8081, 9090)
    assert _settings("--all-namespaces").clusterwide


def test_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVROUTE_OPERATOR_NAMESPACES", "team-a, team-b")
    monkeypatch.setenv("KVROUTE_ROUTER_IMAGE", "img:env")
    monkeypatch.setenv("KVROUTE_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("KVROUTE_OPERATOR_STANDALONE", "true")
    settings = _settings()
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.router_image == "img:env"
    assert settings.metrics_port == 0
    assert settings.standalone
    assert _settings("-A").namespaces == ()  # the flag wins over the environment


def test_namespace_and_all_namespaces_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _settings("-n", "a", "-A")
    assert "not allowed with argument" in capsys.readouterr().err


def test_crd_command_prints_the_generated_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["operator", "crd"]) == 0
    assert capsys.readouterr().out == render_yaml(scheduling_profile_crd())


async def test_health_and_metrics_endpoints(kmock: Any, registry: Registry) -> None:
    health, metrics = free_port(), free_port()
    async with operator_running(kmock, registry, health_port=health, metrics_port=metrics) as op:
        await op.create(POOLS, pool_object("llama"))
        await eventually(op.reconciles)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{health}/healthz") as response:
                assert response.status == 200
            async with session.get(f"http://127.0.0.1:{metrics}/metrics") as response:
                text = await response.text()
    assert 'kvroute_operator_reconciles_total{result="ok"}' in text
    assert 'kvroute_operator_writes_total{kind="Deployment"} 1.0' in text


async def test_kvroute_operator_run_as_a_process(kmock: Any, tmp_path: Any) -> None:
    """The command the e2e suite runs: a kubeconfig, an image; SIGTERM stops it cleanly. (Serving one namespace
    makes kopf list namespaces with a selector the emulator does not parse, hence --all-namespaces here.)"""
    declare_resources(kmock)
    op = RunningOperator(kmock, OperatorMetrics())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "mock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
                "users": [{"name": "me", "user": {"token": "t"}}],
                "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "me"}}],
                "current-context": "mock",
            }
        )
    )
    health = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVROUTE_") and k != "KUBECONFIG"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvroute.cli", "operator", "run", "--kubeconfig", str(kubeconfig),
        "--all-namespaces", "--router-image", "img:e2e", "--health-port", str(health), "--metrics-port", "0",
        "--standalone", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await op.create(POOLS, pool_object("llama"))

        def image() -> str | None:
            deployment = op.obj(DEPLOYMENTS, "llama-kvroute")
            return deployment["spec"]["template"]["spec"]["containers"][0]["image"] if deployment else None

        assert await eventually(image, timeout=30) == "img:e2e"
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{health}/healthz") as response:
            assert response.status == 200
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()[-2000:]
