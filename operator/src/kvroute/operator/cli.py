"""`kvroute operator ...`: run the operator, or print the SchedulingProfile CRD.

`kvroute operator run` watches InferencePools and SchedulingProfiles (in the given namespaces, or all) and runs one
router per pool. It logs in with the pod's service account in a cluster, else with the kubeconfig (`--kubeconfig`,
$KUBECONFIG or ~/.kube/config). Replicas of the operator elect one active instance through kopf peering (the
KopfPeering object named by `--peering`; without it the operator runs standalone). `/healthz` answers on
`--health-port`, Prometheus metrics on `--metrics-port`. Every flag defaults to a `KVROUTE_*` environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import TYPE_CHECKING, Any

from kvroute.operator.settings import (
    DEFAULT_ROUTER_IMAGE,
    ENV,
    OperatorSettings,
    env_default,
    parse_bool,
    parse_namespaces,
)

if TYPE_CHECKING:
    from kvroute.router.config.builder import Registry

LOG_LEVELS = ("debug", "info", "warning", "error")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 65535")
    return port


def register(sub: Any) -> None:
    parser = sub.add_parser("operator", help="Kubernetes operator", description=__doc__)
    commands = parser.add_subparsers(dest="operator_command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the operator", description=__doc__)
    add = run.add_argument
    add("--kubeconfig", metavar="PATH", help="kubeconfig to use outside a cluster (default: $KUBECONFIG)")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        dest="namespaces",
        action="append",
        metavar="NS",
        help=f"serve this namespace; repeatable (default: ${ENV['namespaces']}, comma-separated, else all)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="serve every namespace")
    add(
        "--router-image",
        default=env_default("router_image", DEFAULT_ROUTER_IMAGE),
        help=f"image of the router pods (${ENV['router_image']}; default {DEFAULT_ROUTER_IMAGE})",
    )
    add(
        "--router-image-pull-policy",
        choices=("Always", "IfNotPresent", "Never"),
        default=env_default("router_image_pull_policy", "IfNotPresent"),
        help=f"(${ENV['router_image_pull_policy']}; default IfNotPresent)",
    )
    add(
        "--health-port",
        type=_port,
        default=_port(env_default("health_port", "8081")),
        help=f"port of GET /healthz, 0 to disable (${ENV['health_port']}; default 8081)",
    )
    add(
        "--metrics-port",
        type=_port,
        default=_port(env_default("metrics_port", "9090")),
        help=f"port of GET /metrics, 0 to disable (${ENV['metrics_port']}; default 9090)",
    )
    add(
        "--peering",
        default=env_default("peering", "kvroute"),
        help=f"KopfPeering object the replicas share (${ENV['peering']}; default kvroute)",
    )
    add(
        "--standalone",
        action="store_true",
        default=parse_bool(env_default("standalone", "")),
        help=f"run without peering even if the peering object exists (${ENV['standalone']})",
    )
    add(
        "--log-level",
        choices=LOG_LEVELS,
        default=env_default("log_level", "info"),
        help=f"(${ENV['log_level']}; default info)",
    )
    run.set_defaults(run=_run, parser=run)

    crd = commands.add_parser("crd", help="print the SchedulingProfile CRD generated from the configuration models")
    crd.set_defaults(run=_crd)


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    if args.all_namespaces:
        namespaces: tuple[str, ...] = ()
    elif args.namespaces:
        namespaces = tuple(args.namespaces)
    else:
        namespaces = parse_namespaces(env_default("namespaces", ""))
    return OperatorSettings(
        router_image=args.router_image,
        router_image_pull_policy=args.router_image_pull_policy,
        namespaces=namespaces,
        kubeconfig=args.kubeconfig,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        peering=args.peering,
        standalone=args.standalone,
        log_level=args.log_level,
    )


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kvroute.operator.registry import RegistryNotFoundError, load_plugin_registry

    try:
        registry = load_plugin_registry()
    except RegistryNotFoundError as exc:
        args.parser.error(str(exc))
    asyncio.run(serve(settings, registry))
    return 0


async def serve(
    settings: OperatorSettings,
    registry: Registry,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    kopf_settings: Any = None,
    **context: Any,
) -> None:
    """Runs the operator until SIGINT/SIGTERM or `stop`; sets `ready` once it runs. `kopf_settings` are kopf's
    (`kopf.OperatorSettings`), `context` goes to `OperatorContext` (e.g. fixed `credentials`)."""
    import kopf
    import prometheus_client

    import kvroute.operator.main  # noqa: F401  (registers the handlers)
    from kvroute.operator.context import OperatorContext

    ctx = OperatorContext(settings, registry, **context)
    metrics_server = None
    if settings.metrics_port:
        metrics_server, _ = prometheus_client.start_http_server(settings.metrics_port, registry=ctx.metrics.registry)
    try:
        await kopf.operator(
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
            memo=kopf.Memo(kvroute=ctx),
            settings=kopf_settings,
            stop_flag=stop,
            ready_flag=ready,
        )
    finally:
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.shutdown)
            metrics_server.server_close()


def _crd(args: argparse.Namespace) -> int:
    from kvroute.operator.crdgen import render_yaml, scheduling_profile_crd

    print(render_yaml(scheduling_profile_crd()), end="")
    return 0
